cwlVersion: v1.2
class: CommandLineTool
doc: Fails the first time it runs (per counter file), succeeds afterwards.
baseCommand: [sh, -c, 'if [ -e "$0" ]; then exit 0; else touch "$0"; exit 5; fi']
inputs:
  counter: {type: string, inputBinding: {position: 1}}
outputs: []
