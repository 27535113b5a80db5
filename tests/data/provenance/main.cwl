cwlVersion: v1.2
class: Workflow
doc: Two steps in files of their own, a file and a string in, files and an int out (tests/test_provenance.py).
inputs:
  text: File
  suffix: {type: string, default: "!"}
outputs:
  shout: {type: File, outputSource: upper/out}
  size: {type: int, outputSource: count/n}
steps:
  upper:
    run: upper.cwl
    in: {text: text, suffix: suffix}
    out: [out]
  count:
    run: count.cwl
    in: {text: upper/out}
    out: [n]
