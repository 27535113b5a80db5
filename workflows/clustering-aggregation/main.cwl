#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: Workflow
label: hybrid clustering aggregation
doc: |
  Reference use case: generate points, then loop {three clusterings -> MWIS QUBO ->
  (quantum candidate) annealing -> silhouette} until the best silhouette exceeds
  `threshold` or `max_iterations` iterations ran. Iteration i uses seed `seed + i`.
  Runs with no job file: cwltool --enable-ext main.cwl
$namespaces:
  cwltool: "http://commonwl.org/cwltool#"
  qflow: "https://qflow.dev/ns#"
requirements:
  InlineJavascriptRequirement: {}
  StepInputExpressionRequirement: {}
  SubworkflowFeatureRequirement: {}
inputs:
  n_samples:
    type: int
    default: 3000
    doc: points to generate (the papers used 80000, which runs too, see README.md)
  centers:
    type: int
    default: 8
  n_features:
    type: int
    default: 2
  random_state:
    type: int
    default: 4919
    doc: make_blobs random_state (0x1337)
  cluster_std:
    type: float
    default: 1.0
  seed:
    type: int
    default: 0
    doc: seed of the first iteration; each further iteration adds 1
  threshold:
    type: float
    default: 0.8
    doc: stop once the best silhouette is above this
  max_iterations:
    type: int
    default: 10
  silhouette_sample:
    type: int
    default: 2000
    doc: silhouette computed on this many sampled points (0 = exact, as in the papers)
  num_reads:
    type: int
    default: 100
    doc: simulated-annealing reads
  num_sweeps:
    type: int
    default: 1000
    doc: simulated-annealing sweeps per read
  min_seconds_kmeans:
    type: float
    default: 0
    doc: emulated node time, the kmeans step lasts at least this long (benchmarks; 0 = off)
  min_seconds_dbscan:
    type: float
    default: 0
    doc: emulated node time, the dbscan step lasts at least this long (benchmarks; 0 = off)
  min_seconds_hierarchical:
    type: float
    default: 0
    doc: emulated node time, the hierarchical step lasts at least this long (benchmarks; 0 = off)
  min_seconds_silhouette:
    type: float
    default: 0
    doc: emulated node time, the silhouette step lasts at least this long (benchmarks; 0 = off)
outputs:
  labels:
    type: File?
    doc: consensus labels (.npy, int64) of the best iteration (null only if no iteration ran)
    outputSource: loop/best_labels
  score:
    type: float?
    doc: best silhouette score
    outputSource: loop/best_score
  iterations:
    type: int?
    doc: number of iterations that ran
    outputSource: loop/iterations
steps:
  generate:
    run: generate.cwl
    in:
      n_samples: n_samples
      centers: centers
      n_features: n_features
      random_state: random_state
      cluster_std: cluster_std
    out: [points]
  loop:
    run: loop.cwl
    in:
      points: generate/points
      seed: seed
      iteration:
        default: 0
      threshold: threshold
      max_iterations: max_iterations
      sample: silhouette_sample
      num_reads: num_reads
      num_sweeps: num_sweeps
      min_seconds_kmeans: min_seconds_kmeans
      min_seconds_dbscan: min_seconds_dbscan
      min_seconds_hierarchical: min_seconds_hierarchical
      min_seconds_silhouette: min_seconds_silhouette
      previous_best_score:
        default: -1.0
      previous_best_labels:
        default: null
    out: [labels, score, best_labels, best_score, iterations]
    requirements:
      cwltool:Loop:
        loopWhen: $(inputs.previous_best_score <= inputs.threshold && inputs.iteration < inputs.max_iterations)
        loop:
          seed:
            valueFrom: $(inputs.seed + 1)
          iteration: iterations
          previous_best_score: best_score
          previous_best_labels: best_labels
        outputMethod: last
