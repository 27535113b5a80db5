cwlVersion: v1.2
class: Workflow
doc: Independent sleeps, to see concurrency bounded by the location's slots.
requirements:
  ScatterFeatureRequirement: {}
inputs:
  seconds: {type: "float[]", default: [1, 1, 1, 1]}
outputs: []
steps:
  nap:
    run: sleep.cwl
    scatter: seconds
    in: {seconds: seconds}
    out: []
