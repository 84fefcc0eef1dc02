// SegmentAnything: the shared inference core (TinyViT and SAM ViT image encoders, prompt encoder,
// mask decoder, predictor, automatic mask generator, preprocessing, checkpoint loading).
// Its models are built from the Layers module's types, so the encoder the trainer trains is the
// encoder the inference core runs. Contents arrive with issue 3.
import Layers
import Tensor
