cwlVersion: v1.2
class: CommandLineTool
doc: Ignores SIGTERM (as some codes do) and sleeps; writes its PID first.
baseCommand: [sh, -c, 'trap "" TERM; echo $$ > "$0"; exec sleep 300']
inputs:
  pidfile: {type: string, inputBinding: {position: 1}}
outputs: []
