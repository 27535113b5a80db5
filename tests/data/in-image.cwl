#!/usr/bin/env cwl-runner
# Reads a file only qflow's test images have (qflow.testing.container_images.MARKER) and
# the container's user: succeeds only inside the image.
cwlVersion: v1.2
class: CommandLineTool
hints:
  DockerRequirement:
    dockerPull: docker.io/debian:stable-slim
baseCommand: [cat, /etc/qflow-test-image]
inputs: []
outputs:
  marker:
    type: stdout
stdout: marker.txt
