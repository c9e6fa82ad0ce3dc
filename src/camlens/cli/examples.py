"""The examples that end each command's --help; tests/test_cli.py parses every one of them."""

__all__ = [
    "COMPARE_EXAMPLE",
    "DEMO_EXAMPLE",
    "DIFF_EXAMPLE",
    "EVALUATE_EXAMPLE",
    "EXPLAIN_EXAMPLE",
    "EXPORT_EXAMPLE",
    "REPORT_EXAMPLE",
    "RUN_EXAMPLE",
    "SUMMARY_EXAMPLE",
    "TRAIN_EXAMPLE",
    "VIEW_EXAMPLE",
]

DEMO_EXAMPLE = """example:
  camlens demo                          # offline: shipped model, bundled sample -> report.html
  camlens demo --out /tmp/demo --method gradcam,gradcam++"""
RUN_EXAMPLE = """example:
  camlens run --data cifar10 --out runs/quick --epochs 1 --subset 2000   # CIFAR-10, downloaded
  camlens run --data my-images --out runs/mine --epochs 30   # my-images/{train,test}/<class>/
  (run it again after a kill: it resumes training, then redoes the later steps)"""
TRAIN_EXAMPLE = """example:
  camlens train --data cifar10 --out runs/quick --epochs 1 --subset 2000
  camlens train --data cifar10 --out runs/r18 --epochs 30           # official batches, downloaded
  camlens train --data cifar10 --out runs/r18 --epochs 30 --resume  # continue a killed run
  torchrun --nproc_per_node 4 -m camlens train --data cifar10 --out runs/r18 --epochs 30
      (4 processes, one GPU each: --batch-size is the global batch, split across them)"""
EVALUATE_EXAMPLE = """example:
  camlens evaluate --checkpoint shipped --data sample --out eval     # offline, bundled
  camlens evaluate --checkpoint runs/quick/checkpoint.safetensors --data cifar10 \\
      --out runs/quick/eval --tta"""
EXPLAIN_EXAMPLE = """example:
  camlens explain --checkpoint shipped --data sample --out explain --layer layer3,layer4
  camlens explain --over-epochs runs/r18 --data cifar10 --out epochs   # train --keep-every K
  camlens explain --checkpoint runs/quick/checkpoint.safetensors --data cifar10 \\
      --out runs/quick/explain --method gradcam,gradcam++ --label cat --pred dog --limit 50
  (several methods: one gallery per method, OUT/gallery/gradcam/, OUT/gallery/gradcam++/)"""
COMPARE_EXAMPLE = """example:
  camlens compare --checkpoint shipped --data sample --out compare --limit 32
  camlens compare --checkpoint runs/r18/checkpoint.safetensors --data cifar10 --out cmp \\
      --method gradcam,scorecam --layer layer4
  camlens compare --checkpoint shipped --data sample --out refine --limit 32 \\
      --method refinecam --layer layer4,layer3+layer4    # A+B: one engine on both layers
  (writes OUT/compare.csv, compare.json, compare.png and sanity.png, each as its step ends)"""
DIFF_EXAMPLE = """example:
  camlens diff --checkpoint shipped --checkpoint shipped-layer --data sample --out diff
  camlens diff --checkpoint runs/bn/checkpoint.safetensors \\
      --checkpoint runs/ln/checkpoint.safetensors --data cifar10 --out bn-vs-ln --names BN,LN
  (writes OUT/diff.html, one self-contained page, and OUT/diff.json)"""
EXPORT_EXAMPLE = """example:
  camlens export --checkpoint runs/r18/checkpoint.safetensors --out model-fp16.safetensors"""
REPORT_EXAMPLE = """example:
  camlens report --model shipped --data sample --out report        # offline, bundled
  camlens report --model mynet.py:make --weights mynet.pt --mean 0.5,0.5,0.5 --std 0.25,0.25,0.25 \\
      --data my-images --out my-report     # my-images/{train,test}/<class>/
  camlens report --model timm:resnet18 --weights r18.safetensors --data my-images --out r
  (no --layer: the last layer before the global pooling, printed; camlens summary --model lists
  the others)"""
SUMMARY_EXAMPLE = """example:
  camlens summary                      # the standard ResNet18, batch norm
  camlens summary --norm layer
  camlens summary --checkpoint runs/quick/checkpoint.safetensors
  camlens summary --model mynet.py:make --classes 5 --image-size 64  # + where maps come from"""
VIEW_EXAMPLE = """example:
  camlens view camlens-demo                          # a demo, run, report or explain folder
  camlens view --model shipped --data sample         # offline: a model and its data directly
  camlens view runs/r18 --port 8080                  # then open http://127.0.0.1:8080/
  (serves 127.0.0.1 only unless --host says otherwise; Ctrl-C stops it;
  pip install 'camlens[view]' first)"""
