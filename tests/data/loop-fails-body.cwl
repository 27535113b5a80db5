cwlVersion: v1.2
class: CommandLineTool
doc: Counts i up by one; fails (exit 3) from i = 1 on, so a loop's second iteration fails.
baseCommand: [python3, -c]
arguments:
  - 'import sys; i = int(sys.argv[1]); sys.exit(3) if i >= 1 else open("o.txt", "w").write(str(i + 1))'
  - $(inputs.i)
requirements:
  InlineJavascriptRequirement: {}
inputs:
  i: int
outputs:
  o:
    type: int
    outputBinding:
      glob: o.txt
      loadContents: true
      outputEval: $(parseInt(self[0].contents))
