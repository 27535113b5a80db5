cwlVersion: v1.2
class: CommandLineTool
doc: Prints i + 1; the output is read back as an int.
requirements:
  InlineJavascriptRequirement: {}
baseCommand: echo
arguments: [$(inputs.i + 1)]
inputs:
  i: int
  count: {type: int?}
stdout: out.txt
outputs:
  o:
    type: int
    outputBinding:
      glob: out.txt
      loadContents: true
      outputEval: $(parseInt(self[0].contents))
