cwlVersion: v1.2
class: Workflow
doc: The loop body of loop-counter.cwl; adds 2 to i in two steps.
inputs:
  i: int
  n: int
outputs:
  o: {type: int, outputSource: second/o}
steps:
  first:
    run: inc.cwl
    in: {i: i}
    out: [o]
  second:
    run: inc.cwl
    in: {i: first/o}
    out: [o]
