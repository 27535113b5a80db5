cwlVersion: v1.2
class: CommandLineTool
doc: Sleeps `seconds`; returns i + 1 so that a loop can count.
requirements:
  InlineJavascriptRequirement: {}
baseCommand: sleep
inputs:
  seconds: {type: float, default: 1, inputBinding: {position: 1}}
  i: int
  count: int?
outputs:
  o: {type: int, outputBinding: {outputEval: $(inputs.i + 1)}}
