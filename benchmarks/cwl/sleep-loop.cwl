cwlVersion: v1.2
class: Workflow
doc: count sequential `sleep seconds` steps (a cwltool:Loop), the Slurm overhead benchmark.
$namespaces: {cwltool: "http://commonwl.org/cwltool#"}
requirements:
  InlineJavascriptRequirement: {}
inputs:
  i: {type: int, default: 0}
  count: {type: int, default: 20}
  seconds: {type: float, default: 1}
outputs:
  o: {type: int, outputSource: nap/o}
steps:
  nap:
    run: sleep.cwl
    in:
      i: i
      count: count
      seconds: seconds
    out: [o]
    requirements:
      cwltool:Loop:
        loopWhen: $(inputs.i < inputs.count)
        loop:
          i: o
        outputMethod: last
