cwlVersion: v1.2
class: Workflow
doc: |
  a (short) and b (long) start together; c starts when a ends, while b still runs; d after
  c. A crash while b and c run leaves two executions alive that started apart.
inputs:
  log: string
  short: {type: float, default: 0.5}
  long: {type: float, default: 4}
  data: {type: "File?", doc: staged for a}
outputs:
  out_b: {type: File, outputSource: b/out}
  out_d: {type: File, outputSource: d/out}
steps:
  a:
    run: mark.cwl
    in: {log: log, name: {default: a}, seconds: short, data: data}
    out: [out]
  b:
    run: mark.cwl
    in: {log: log, name: {default: b}, seconds: long}
    out: [out]
  c:
    run: mark.cwl
    in: {log: log, name: {default: c}, seconds: long, after: a/out}
    out: [out]
  d:
    run: mark.cwl
    in: {log: log, name: {default: d}, seconds: short, after: c/out}
    out: [out]
