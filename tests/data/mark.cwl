cwlVersion: v1.2
class: CommandLineTool
doc: |
  Appends "start NAME PID" to a shared log, sleeps, writes NAME to out.txt. Crash tests read
  the log to know what ran where and whether two executions of one step overlapped.
baseCommand: [sh, -c, 'echo "start $1 $$" >> "$0"; sleep "$2"; echo "$1" > out.txt']
inputs:
  log: {type: string, inputBinding: {position: 0}}
  name: {type: string, inputBinding: {position: 1}}
  seconds: {type: float, inputBinding: {position: 2}}
  after: {type: "File?", doc: only orders the step after another}
  data: {type: "File?", doc: staged only (its contents define the execution all the same)}
outputs:
  out: {type: File, outputBinding: {glob: out.txt}}
