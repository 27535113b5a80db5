#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: Workflow
label: one clustering-aggregation iteration
doc: |
  clustering (kmeans, dbscan, hierarchical in parallel) -> qubo -> annealing -> silhouette.
  The silhouette step also carries the best result so far, so the last iteration's
  best_labels/best_score are the best over all iterations.
$namespaces:
  cwltool: "http://commonwl.org/cwltool#"
  qflow: "https://qflow.dev/ns#"
requirements:
  InlineJavascriptRequirement: {}
inputs:
  points: File
  seed: int
  iteration:
    type: int
    default: 0
  sample:
    type: int
    default: 2000
  num_reads:
    type: int
    default: 100
  num_sweeps:
    type: int
    default: 1000
  previous_best_score:
    type: float?
    doc: best silhouette of the previous iterations (-1 or null before the first)
  previous_best_labels:
    type: File?
    doc: consensus labels of the best previous iteration (null before the first)
  min_seconds_kmeans:
    type: float
    default: 0
    doc: emulated node time of the kmeans step (benchmarks; 0 = off)
  min_seconds_dbscan:
    type: float
    default: 0
    doc: emulated node time of the dbscan step (benchmarks; 0 = off)
  min_seconds_hierarchical:
    type: float
    default: 0
    doc: emulated node time of the hierarchical step (benchmarks; 0 = off)
  min_seconds_silhouette:
    type: float
    default: 0
    doc: emulated node time of the silhouette step (benchmarks; 0 = off)
outputs:
  labels:
    type: File
    outputSource: silhouette/labels
  score:
    type: float
    outputSource: silhouette/score
  best_labels:
    type: File
    outputSource: silhouette/best_labels
  best_score:
    type: float
    outputSource: silhouette/best_score
  iterations:
    type: int
    outputSource: silhouette/iterations
steps:
  kmeans:
    run: kmeans.cwl
    in:
      points: points
      seed: seed
      min_seconds: min_seconds_kmeans
    out: [labels]
  dbscan:
    run: dbscan.cwl
    in:
      points: points
      seed: seed
      min_seconds: min_seconds_dbscan
    out: [labels]
  hierarchical:
    run: hierarchical.cwl
    in:
      points: points
      seed: seed
      min_seconds: min_seconds_hierarchical
    out: [labels]
  qubo:
    run: qubo.cwl
    in:
      kmeans: kmeans/labels
      dbscan: dbscan/labels
      hierarchical: hierarchical/labels
    out: [qubo]
  annealing:
    # Quantum candidate: the QUBO could go to a QPU; solve.cwl is the classical
    # simulated-annealing implementation that runs when no quantum target is chosen.
    hints:
      qflow:QuantumCandidate:
        quantum: solve-qpu.cwl
    run: solve.cwl
    in:
      qubo: qubo/qubo
      num_reads: num_reads
      num_sweeps: num_sweeps
      seed: seed
    out: [solution]
  silhouette:
    run: silhouette.cwl
    in:
      points: points
      qubo: qubo/qubo
      solution: annealing/solution
      kmeans: kmeans/labels
      dbscan: dbscan/labels
      hierarchical: hierarchical/labels
      sample: sample
      previous_best_score: previous_best_score
      previous_best_labels: previous_best_labels
      iteration: iteration
      min_seconds: min_seconds_silhouette
    out: [labels, score, best_labels, best_score, iterations]
