cwlVersion: v1.2
class: Workflow
doc: |
  Chaos test of a QPU step: a (short) then the quantum-candidate solve, b (long) beside
  them, d (short) after solve. a, b and d log "start NAME PID" (mark.cwl); solve's executions
  are the tasks the QPU lists.
$namespaces: {qflow: "https://qflow.dev/ns#"}
inputs:
  log: string
  qubo: File
  short: {type: float, default: 0.5}
  long: {type: float, default: 4}
outputs:
  out_b: {type: File, outputSource: b/out}
  solution: {type: File, outputSource: solve/solution}
  out_d: {type: File, outputSource: d/out}
steps:
  a:
    run: mark.cwl
    in: {log: log, name: {default: a}, seconds: short}
    out: [out]
  b:
    run: mark.cwl
    in: {log: log, name: {default: b}, seconds: long}
    out: [out]
  solve:
    run: ../../workflows/clustering-aggregation/solve.cwl
    hints:
      qflow:QuantumCandidate:
        quantum: ../../workflows/clustering-aggregation/solve-qpu.cwl
    in: {qubo: qubo, after: a/out}
    out: [solution]
  d:
    run: mark.cwl
    in: {log: log, name: {default: d}, seconds: short, after: solve/solution}
    out: [out]
