cwlVersion: v1.2
class: CommandLineTool
doc: A tool with a required integer input and a required file.
baseCommand: [cat]
inputs:
  count: {type: int}
  data: {type: File, inputBinding: {position: 1}}
outputs: []
