"""Fashion-MNIST as a contract: file names, classes, shapes and sizes. Constants only.

Every stage that needs to know what the data set looks like imports it from here, and nothing
else comes with it (no torch), so `download` stays a small, fast stage.
"""

# The canonical file names, as Zalando, torchvision and Debian's package spell them.
RAW_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (28, 28)
IN_FEATURES = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
SPLITS = ("train", "test")
# The real files hold 60,000 and 10,000 images. A file claiming more than this is refused before
# it is decompressed: a header is a claim, and a claim must not cost memory (at most 78 MB here).
MAX_IMAGES = 100_000
