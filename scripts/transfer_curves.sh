#!/usr/bin/env bash
# The article's comparison as a measurement: fine-tuning, transfer learning,
# and transfer learning with the frozen-prefix feature cache, trained on the
# same image folder, drawn in one chart (loss and accuracy vs wall-clock).
#
#   scripts/transfer_curves.sh DATA_DIR NUM_CLASSES [WEIGHTS] [OUT_DIR]
#
# DATA_DIR: DATA_DIR/train/<class>/*.png|jpg and DATA_DIR/val/<class>/...
# WEIGHTS: pretrained torchvision ResNet-18 (.pth or .safetensors); without
# it the runs start from random weights. Extra options for every run can
# be passed in $TRAIN_ARGS (default: 5 epochs, batch 32, size 224, lr 0.01).
set -euo pipefail
data=${1:?DATA_DIR}
classes=${2:?NUM_CLASSES}
weights=${3:-}
out=${4:-transfer-curves}
bin=${FROSTGRAD:-target/release/frostgrad}
args=${TRAIN_ARGS:---epochs 5 --batch 32 --size 224 --lr 0.01 --momentum 0.9}
mkdir -p "$out"
common=(train --data "$data" --num-classes "$classes" --seed 0)
[ -n "$weights" ] && common+=(--weights "$weights")
# shellcheck disable=SC2086
"$bin" "${common[@]}" $args --trainable '*' --out "$out/finetune.safetensors" --log-json "$out/finetune.json"
# shellcheck disable=SC2086
"$bin" "${common[@]}" $args --trainable 'fc.*' --frozen-bn eval --out "$out/transfer.safetensors" --log-json "$out/transfer.json"
# shellcheck disable=SC2086
"$bin" "${common[@]}" $args --trainable 'fc.*' --frozen-bn eval --cache-features --out "$out/transfer-cached.safetensors" --log-json "$out/transfer-cached.json"
"$bin" plot --svg "$out/curves.svg" finetune="$out/finetune.json" transfer="$out/transfer.json" transfer+cache="$out/transfer-cached.json"
