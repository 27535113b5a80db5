cwlVersion: v1.2
class: CommandLineTool
doc: The size of the text in bytes.
requirements:
  InlineJavascriptRequirement: {}
baseCommand: [sh, -c, 'wc -c < "$0" > n.txt']
inputs:
  text: {type: File, inputBinding: {position: 0}}
outputs:
  n:
    type: int
    outputBinding:
      glob: n.txt
      loadContents: true
      outputEval: $(parseInt(self[0].contents))
