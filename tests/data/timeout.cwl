cwlVersion: v1.2
class: CommandLineTool
requirements:
  ToolTimeLimit: {timelimit: 1}
baseCommand: [sh, -c, 'echo $$ > "$0"; exec sleep 30']
inputs:
  pidfile: {type: string, inputBinding: {position: 1}}
outputs: []
