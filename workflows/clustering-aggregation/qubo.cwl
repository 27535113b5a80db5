#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool
label: qubo
doc: |
  Maximum-weight-independent-set QUBO over every cluster of the three methods
  (w_i = |C_i| / max |C_j|, edges between clusters sharing a point, lambda = number of
  clusters). Writes qubo.json (terms as [i, j, value], upper triangle, plus the cluster table
  needed to decode a solution).
requirements:
  ResourceRequirement:
    coresMin: 1
    ramMin: 256
  ToolTimeLimit:
    timelimit: 300
baseCommand: python3
arguments:
  - {position: 1, valueFrom: qubo}
  - {position: 20, prefix: --output, valueFrom: qubo.json}
inputs:
  script:
    type: File
    default: {class: File, location: clagg.py}
    inputBinding: {position: 0}
  kmeans:
    type: File
    inputBinding: {position: 2, prefix: --kmeans}
  dbscan:
    type: File
    inputBinding: {position: 3, prefix: --dbscan}
  hierarchical:
    type: File
    inputBinding: {position: 4, prefix: --hierarchical}
outputs:
  qubo:
    type: File
    outputBinding: {glob: qubo.json}
