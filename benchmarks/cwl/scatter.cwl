cwlVersion: v1.2
class: Workflow
doc: A `width`-way scatter of a trivial step (the Slurm throughput benchmark).
requirements:
  ScatterFeatureRequirement: {}
  InlineJavascriptRequirement: {}
  StepInputExpressionRequirement: {}
inputs:
  width: {type: int, default: 200}
outputs: []
steps:
  make:
    run:
      class: ExpressionTool
      inputs: {width: int}
      outputs: {items: "int[]"}
      expression: '$({"items": Array.from({length: inputs.width}, function (_, k) { return k; })})'
    in: {width: width}
    out: [items]
  trivial:
    run:
      class: CommandLineTool
      baseCommand: "true"
      inputs: {item: int}
      outputs: []
    scatter: item
    in: {item: make/items}
    out: []
