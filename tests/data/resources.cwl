cwlVersion: v1.2
class: CommandLineTool
doc: Asks for more than this host has; a remote location must still get the job.
requirements:
  ResourceRequirement: {coresMin: 64, ramMin: 100000}
  ToolTimeLimit: {timelimit: 30}
baseCommand: "true"
inputs: []
outputs: []
