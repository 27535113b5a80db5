cwlVersion: v1.2
class: Workflow
doc: Several quantum-candidate solves at once (one per seed), to contend for virtual QPUs.
$namespaces: {qflow: "https://qflow.dev/ns#"}
requirements:
  ScatterFeatureRequirement: {}
inputs:
  qubo: File
  seeds: {type: "int[]", default: [0, 1, 2]}
outputs:
  solutions: {type: "File[]", outputSource: solve/solution}
steps:
  solve:
    run: ../../workflows/clustering-aggregation/solve.cwl
    hints:
      qflow:QuantumCandidate:
        quantum: ../../workflows/clustering-aggregation/solve-qpu.cwl
    scatter: seed
    in: {qubo: qubo, seed: seeds}
    out: [solution]
