#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool
label: solve-qpu
doc: |
  Quantum implementation of the quantum-candidate step: the same QUBO as a task on the QPU
  that qflow placed the step on, through qflow's QPU gateway (QFLOW_QPU_URL and a per-step
  QFLOW_QPU_TOKEN, set by qflow; no vendor credential reaches the step), with qflow's
  stdlib-only client module qflow.qpu_client (docs/quantum-steps.md). Same inputs and
  outputs as solve.cwl, so qflow can fall back to it.
requirements:
  ResourceRequirement:
    coresMin: 1
    ramMin: 256
  ToolTimeLimit:
    timelimit: 300
baseCommand: python3
arguments:
  - {position: 1, valueFrom: solve-qpu}
  - {position: 20, prefix: --output, valueFrom: solution.json}
inputs:
  script:
    type: File
    default: {class: File, location: clagg.py}
    inputBinding: {position: 0}
  qubo:
    type: File
    inputBinding: {position: 2, prefix: --qubo}
  num_reads:
    type: int
    default: 100
    inputBinding: {position: 3, prefix: --num-reads}
  num_sweeps:
    type: int
    default: 1000
    inputBinding: {position: 4, prefix: --num-sweeps}
  seed:
    type: int
    default: 0
    inputBinding: {position: 5, prefix: --seed}
outputs:
  solution:
    type: File
    outputBinding: {glob: solution.json}
