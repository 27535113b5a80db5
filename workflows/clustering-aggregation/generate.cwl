#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool
label: generate
doc: Synthetic points (sklearn make_blobs), written as points.npy (float64, n_samples x n_features).
requirements:
  ResourceRequirement:
    coresMin: 1
    ramMin: 512
  ToolTimeLimit:
    timelimit: 300
baseCommand: python3
arguments:
  - {position: 1, valueFrom: generate}
  - {position: 20, prefix: --output, valueFrom: points.npy}
inputs:
  script:
    type: File
    default: {class: File, location: clagg.py}
    inputBinding: {position: 0}
  n_samples:
    type: int
    default: 3000
    inputBinding: {position: 2, prefix: --n-samples}
  centers:
    type: int
    default: 8
    inputBinding: {position: 3, prefix: --centers}
  n_features:
    type: int
    default: 2
    inputBinding: {position: 4, prefix: --n-features}
  random_state:
    type: int
    default: 4919  # 0x1337, as in the authors' code
    inputBinding: {position: 5, prefix: --random-state}
  cluster_std:
    type: float
    default: 1.0
    inputBinding: {position: 6, prefix: --cluster-std}
outputs:
  points:
    type: File
    outputBinding: {glob: points.npy}
