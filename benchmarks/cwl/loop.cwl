cwlVersion: v1.2
class: Workflow
doc: A cwltool:Loop of a trivial CommandLineTool, n iterations (the overhead benchmark).
$namespaces: {cwltool: "http://commonwl.org/cwltool#"}
requirements:
  InlineJavascriptRequirement: {}
inputs:
  i: {type: int, default: 0}
  count: {type: int, default: 50}
outputs:
  o: {type: int, outputSource: inc/o}
steps:
  inc:
    run: inc.cwl
    in:
      i: i
      count: count
    out: [o]
    requirements:
      cwltool:Loop:
        loopWhen: $(inputs.i < inputs.count)
        loop:
          i: o
        outputMethod: last
