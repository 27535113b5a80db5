#!/usr/bin/env cwl-runner
# A software container no registry or store has.
cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement:
    dockerPull: docker.io/library/qflow-no-such-image:0
baseCommand: "true"
inputs: []
outputs: []
