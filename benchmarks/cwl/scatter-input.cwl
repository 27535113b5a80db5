cwlVersion: v1.2
class: Workflow
doc: A scatter of a trivial step over an array given in the job file (the scale benchmark).
requirements:
  ScatterFeatureRequirement: {}
inputs:
  items: int[]
outputs: []
steps:
  trivial:
    run:
      class: CommandLineTool
      baseCommand: "true"
      inputs: {item: int}
      outputs: []
    scatter: item
    in: {item: items}
    out: []
