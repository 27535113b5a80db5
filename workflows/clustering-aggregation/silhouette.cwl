#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool
label: silhouette
doc: |
  Decodes the solution into a consensus clustering (uncovered points go to the nearest
  selected centroid), scores it with the (sampled) silhouette (-1 with fewer than 2
  clusters) and keeps the best result so far: best_labels/best_score are this iteration's
  result when it beats best_score (or no best_labels is given), else the previous best.
requirements:
  InlineJavascriptRequirement: {}
  ResourceRequirement:
    coresMin: 1
    ramMin: 512
  ToolTimeLimit:
    timelimit: 900  # the exact silhouette of 80 000 points: ~1 min alone, more when shared
baseCommand: python3
arguments:
  - {position: 1, valueFrom: silhouette}
  - {position: 20, prefix: --output, valueFrom: consensus.npy}
  - {position: 21, prefix: --best-output, valueFrom: best_labels.npy}
  - {position: 22, prefix: --score-output, valueFrom: score.json}
inputs:
  script:
    type: File
    default: {class: File, location: clagg.py}
    inputBinding: {position: 0}
  points:
    type: File
    inputBinding: {position: 2, prefix: --points}
  qubo:
    type: File
    inputBinding: {position: 3, prefix: --qubo}
  solution:
    type: File
    inputBinding: {position: 4, prefix: --solution}
  kmeans:
    type: File
    inputBinding: {position: 5, prefix: --kmeans}
  dbscan:
    type: File
    inputBinding: {position: 6, prefix: --dbscan}
  hierarchical:
    type: File
    inputBinding: {position: 7, prefix: --hierarchical}
  sample:
    type: int
    default: 2000
    doc: silhouette on a fixed random sample of this many points (0 = exact, O(N^2) time)
    inputBinding: {position: 8, prefix: --sample}
  previous_best_score:
    type: float?
    doc: best score of the previous iterations (absent on the first)
    inputBinding: {position: 9, prefix: --best-score}
  previous_best_labels:
    type: File?
    doc: consensus labels of the best previous iteration (absent on the first)
    inputBinding: {position: 10, prefix: --best-labels}
  iteration:
    type: int
    default: 0
    doc: iterations completed before this one (not passed to the script)
  min_seconds:
    type: float
    default: 0
    doc: emulated node time, the step lasts at least this long (benchmarks; 0 = off)
    inputBinding: {position: 19, prefix: --min-seconds}
outputs:
  labels:
    type: File
    outputBinding: {glob: consensus.npy}
  score:
    type: float
    outputBinding:
      glob: score.json
      loadContents: true
      outputEval: $(JSON.parse(self[0].contents).score)
  best_labels:
    type: File
    outputBinding: {glob: best_labels.npy}
  best_score:
    type: float
    outputBinding:
      glob: score.json
      loadContents: true
      outputEval: $(JSON.parse(self[0].contents).best_score)
  iterations:
    type: int
    outputBinding:
      outputEval: $(inputs.iteration + 1)
