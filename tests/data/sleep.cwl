cwlVersion: v1.2
class: CommandLineTool
doc: Sleeps; writes its PID first so tests can check it is gone after a cancel.
baseCommand: [sh, -c, 'echo $$ > "$0"; exec sleep "$1"']
inputs:
  pidfile: {type: string, default: /dev/null, inputBinding: {position: 1}}
  seconds: {type: float, default: 1, inputBinding: {position: 2}}
outputs: []
