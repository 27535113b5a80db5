cwlVersion: v1.2
class: Workflow
doc: A scatter whose outputs come back in element order (the scale tests).
requirements:
  ScatterFeatureRequirement: {}
inputs:
  items: int[]
outputs:
  echoed: {type: "int[]", outputSource: echo/value}
steps:
  echo:
    run:
      class: CommandLineTool
      baseCommand: echo
      inputs: {item: {type: int, inputBinding: {position: 1}}}
      stdout: out.txt
      outputs:
        value: {type: int, outputBinding: {glob: out.txt, loadContents: true, outputEval: "$(parseInt(self[0].contents))"}}
      requirements: {InlineJavascriptRequirement: {}}
    scatter: item
    in: {item: items}
    out: [value]
