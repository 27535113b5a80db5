#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool
label: kmeans
doc: "k-means, k ~ U{4..10} drawn from the seed, max_iter 200. Writes kmeans.npy (int64 labels, -1 = no cluster)."
requirements:
  ResourceRequirement:
    coresMin: 1
    ramMin: 512
  ToolTimeLimit:
    timelimit: 300
baseCommand: python3
arguments:
  - {position: 1, valueFrom: kmeans}
  - {position: 20, prefix: --output, valueFrom: kmeans.npy}
inputs:
  script:
    type: File
    default: {class: File, location: clagg.py}
    inputBinding: {position: 0}
  points:
    type: File
    inputBinding: {position: 2, prefix: --points}
  seed:
    type: int
    inputBinding: {position: 3, prefix: --seed}
  min_seconds:
    type: float
    default: 0
    doc: emulated node time, the step lasts at least this long (benchmarks; 0 = off)
    inputBinding: {position: 19, prefix: --min-seconds}
outputs:
  labels:
    type: File
    outputBinding: {glob: kmeans.npy}
