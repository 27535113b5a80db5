cwlVersion: v1.2
class: CommandLineTool
doc: The text in capitals, then the suffix.
baseCommand: [sh, -c, 'tr a-z A-Z < "$0" > shout.txt && printf "%s\n" "$1" >> shout.txt']
inputs:
  text: {type: File, inputBinding: {position: 0}}
  suffix: {type: string, inputBinding: {position: 1}}
outputs:
  out: {type: File, outputBinding: {glob: shout.txt}}
