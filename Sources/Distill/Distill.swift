// Distill: the HDF5 feature cache, data loading, students, trainer, evaluator, exporter and the
// YAML config. Contents arrive with issues 4–6.
import Layers
import SegmentAnything
import Tensor
