#!/usr/bin/env bash
# Regenerates the README gallery from sample_images/ with the installed imgconv.
# Run from the repository root: bash sample_images/gallery/make_gallery.sh
set -euo pipefail
out=sample_images/gallery
src=sample_images/chelsea.png
imgconv apply "$src" -k box:9 -o "$out/chelsea-box9.png" --overwrite
imgconv apply "$src" -k sobel --gray -o "$out/chelsea-sobel.png" --overwrite
imgconv apply "$src" -k diagonal --gray -o "$out/chelsea-diagonal.png" --overwrite
imgconv apply "$src" -k sobel-x --gray --activation relu --pool max --pool-size 2 \
    --output-map normalize -o "$out/chelsea-layer.png" --overwrite
# feature maps: the Kirsch compass bank as four maps, and a two-layer network
imgconv apply sample_images/camera.png -k "$out/kirsch-stack.yaml" \
    --montage "$out/camera-kirsch-stack.png" --overwrite
python "$out/make_layers.py"
imgconv apply sample_images/camera.png --pipeline "$out/two-layers.yaml" \
    --montage "$out/camera-two-layers.png" --overwrite
