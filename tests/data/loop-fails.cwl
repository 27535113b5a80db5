cwlVersion: v1.2
class: Workflow
doc: A cwltool:Loop whose second iteration fails.
$namespaces: {cwltool: "http://commonwl.org/cwltool#"}
requirements:
  InlineJavascriptRequirement: {}
inputs:
  i: {type: int, default: 0}
outputs:
  o: {type: "int?", outputSource: loop/o}
steps:
  loop:
    run: loop-fails-body.cwl
    in: {i: i}
    out: [o]
    requirements:
      cwltool:Loop:
        loopWhen: $(inputs.i < 5)
        loop: {i: o}
        outputMethod: last
