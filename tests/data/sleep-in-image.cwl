#!/usr/bin/env cwl-runner
# Sleeps inside a test image, as PID 1 of its container (which ignores SIGTERM by default).
cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement:
    dockerPull: docker.io/debian:stable-slim
baseCommand: [sleep]
inputs:
  seconds: {type: int, inputBinding: {position: 1}}
outputs: []
