cwlVersion: v1.2
class: Workflow
doc: One quantum-candidate step solving a QUBO file (the use case's own tools).
$namespaces: {qflow: "https://qflow.dev/ns#"}
inputs:
  qubo: File
  seed: {type: int, default: 0}
outputs:
  solution: {type: File, outputSource: solve/solution}
steps:
  solve:
    run: ../../workflows/clustering-aggregation/solve.cwl
    hints:
      qflow:QuantumCandidate:
        quantum: ../../workflows/clustering-aggregation/solve-qpu.cwl
    in: {qubo: qubo, seed: seed}
    out: [solution]
