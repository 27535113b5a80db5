cwlVersion: v1.2
class: Workflow
doc: A cwltool:Loop over a sub-workflow (two steps) that counts i up to n.
$namespaces: {cwltool: "http://commonwl.org/cwltool#"}
requirements:
  SubworkflowFeatureRequirement: {}
  InlineJavascriptRequirement: {}
inputs:
  i: {type: int, default: 0}
  n: {type: int, default: 3}
outputs:
  o: {type: int, outputSource: loop/o}
steps:
  loop:
    run: loop-body.cwl
    in:
      i: i
      n: n
    out: [o]
    requirements:
      cwltool:Loop:
        loopWhen: $(inputs.i < inputs.n)
        loop:
          i: o
        outputMethod: last
