cwlVersion: v1.2
class: ExpressionTool
doc: Runs no command at all; measures qflow's own start-up and shut-down.
requirements:
  InlineJavascriptRequirement: {}
inputs: []
outputs: {}
expression: '$({})'
