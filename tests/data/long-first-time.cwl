cwlVersion: v1.2
class: CommandLineTool
doc: The first run writes its PID and sleeps long (to be hit by a fault); later runs succeed.
baseCommand: [sh, -c, 'if [ -e "$0" ]; then exit 0; fi; echo $$ > "$0"; exec sleep 300']
inputs:
  pidfile: {type: string, inputBinding: {position: 1}}
outputs: []
