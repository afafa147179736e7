"""Whole-model parity fixtures: torchvision VGG16 and ResNet-18 with synthetic weights.

Run from the repository root:  python3 scripts/gen_model_fixtures.py
Needs: torch, torchvision, safetensors, numpy, pillow. Writes tests/fixtures/models/*.safetensors.

Weights and inputs follow the rule in scripts/synthetic.py (twin of src/models/synthetic.rs), so
the Rust tests rebuild them without committing any weights; only outputs are stored here.
"""

import os

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.numpy import save_file
from torchvision import transforms

import synthetic

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "models")


def noise_image(name: str, width: int, height: int) -> np.ndarray:
    """An RGB u8 image [H, W, 3] from the rule: floor((u + 1) * 128)."""
    u = synthetic.tensor(name, (height, width, 3))
    return np.floor((u + np.float32(1.0)) * np.float32(128.0)).astype(np.uint8)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    x = torch.from_numpy(synthetic.tensor("input", (2, 3, 224, 224)))

    vgg = torchvision.models.vgg16()
    synthetic.fill(vgg)
    vgg.eval()
    with torch.no_grad():
        pool5 = torch.flatten(vgg.avgpool(vgg.features(x)), 1)
        fc7 = vgg.classifier[:6](pool5)
        logits = vgg.classifier[6](fc7)
    save_file(
        {"pool5": pool5.numpy(), "fc7": fc7.numpy(), "logits": logits.numpy()},
        os.path.join(OUT, "vgg16.safetensors"),
    )

    resnet = torchvision.models.resnet18()
    synthetic.fill(resnet)
    resnet.eval()
    with torch.no_grad():
        h = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        h = resnet.layer3(resnet.layer2(resnet.layer1(h)))
        conv5 = resnet.layer4(h)
        pool = torch.flatten(resnet.avgpool(conv5), 1)
        logits = resnet.fc(pool)
    save_file(
        {"conv5": conv5.numpy(), "pool": pool.numpy(), "logits": logits.numpy()},
        os.path.join(OUT, "resnet18.safetensors"),
    )

    # Through the CLI: PNG files preprocessed by torchvision itself.
    tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    images = [("img0", 256, 256), ("img1", 256, 256), ("img2", 320, 240)]
    batch = []
    crops = {}
    for name, w, h in images:
        pil = Image.fromarray(noise_image(name, w, h), "RGB")
        batch.append(tf(pil))
        crop = transforms.CenterCrop(224)(transforms.Resize(256)(pil))
        crops[name] = np.asarray(crop, dtype=np.uint8)
    xb = torch.stack(batch)
    with torch.no_grad():
        h = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(xb))))
        h = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(h))))
        pool = torch.flatten(resnet.avgpool(h), 1)
        logits = resnet.fc(pool)
    save_file(
        {"pool": pool.numpy(), "logits": logits.numpy(), "crop_img2": crops["img2"]},
        os.path.join(OUT, "cli_resnet18.safetensors"),
    )
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
