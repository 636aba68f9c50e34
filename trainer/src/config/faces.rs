//! Seed system 3's keys (faces + landmarks; README "Faces and landmarks"), all optional:
//! * `modules_visual_encoder: face_cnn | face_landmarks | face_cnn_landmarks` with `visual_crop: faces` — the
//!   per-frame face crops and landmarks of `faces.csv`; `visual_face_size` (default 48) is the crop's side and
//!   `visual_out_features` (default 16) each encoder's feature width (the seed's sigmoid "features" layer);
//! * `classifier_class_weights: inverse_frequency` — cross-entropy weights = the largest training-class count
//!   divided by each class's count, with PyTorch's `CrossEntropyLoss(weight=w)` semantics;
//! * `classifier_lr_scheduler: linear | plateau` (default `linear`, the reference's warm-up/decay) with
//!   `classifier_plateau_factor` (0.2) and `classifier_plateau_patience` (5): PyTorch `ReduceLROnPlateau` on the
//!   validation loss, no warm-up.

use std::path::Path;

use super::{ClassifierLoss, Config, LrScheduler, VisualCrop, VisualEncoder};
use crate::error::Result;

/// The seed's grey 48x48 faces (FER2013).
pub const DEFAULT_FACE_SIZE: usize = 48;
/// The seed's NN2: the learning rate cut by 0.2 …
pub const DEFAULT_PLATEAU_FACTOR: f64 = 0.2;
/// … when the validation loss has not improved for 5 epochs.
pub const DEFAULT_PLATEAU_PATIENCE: usize = 5;
/// The seed's 16-unit sigmoid feature layer.
pub const DEFAULT_FACE_FEATURES: usize = 16;

impl Config {
    /// Whether the visual encoder is one of the face encoders (it reads `faces.csv`, not the mosaic tensor).
    pub fn uses_faces(&self) -> bool {
        matches!(
            self.modules_visual_encoder,
            VisualEncoder::FaceCnn | VisualEncoder::FaceLandmarks | VisualEncoder::FaceCnnLandmarks
        )
    }

    /// The side of a face crop (`visual_face_size`).
    pub fn face_size(&self) -> usize {
        self.visual_face_size.unwrap_or(DEFAULT_FACE_SIZE)
    }

    /// The width of each face encoder's feature vector (`visual_out_features`).
    pub fn face_features(&self) -> usize {
        self.visual_out_features
            .filter(|n| *n > 0)
            .map_or(DEFAULT_FACE_FEATURES, |n| n as usize)
    }

    pub fn lr_scheduler(&self) -> LrScheduler {
        self.classifier_lr_scheduler.unwrap_or(LrScheduler::Linear)
    }

    /// `(factor, patience)` of the plateau scheduler; `None` for the linear schedule.
    pub fn plateau(&self) -> Option<(f64, usize)> {
        (self.lr_scheduler() == LrScheduler::Plateau).then(|| {
            (
                self.classifier_plateau_factor
                    .unwrap_or(DEFAULT_PLATEAU_FACTOR),
                self.classifier_plateau_patience
                    .unwrap_or(DEFAULT_PLATEAU_PATIENCE),
            )
        })
    }

    pub(super) fn validate_faces(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, message: String| Err(Config::invalid(path, key, message));
        let crop_faces = self.visual_crop == VisualCrop::Faces;
        if self.uses_faces() != crop_faces {
            return bad(
                if crop_faces {
                    "visual_crop"
                } else {
                    "modules_visual_encoder"
                },
                "`visual_crop: faces` and the face encoders (`face_cnn`, `face_landmarks`, `face_cnn_landmarks`) \
                 go together"
                    .into(),
            );
        }
        if self.visual_face_size.is_some() && !crop_faces {
            return bad(
                "visual_face_size",
                "applies to `visual_crop: faces` only".into(),
            );
        }
        // three 2x2 poolings: a side below 8 leaves no pixel
        if let Some(size) = self.visual_face_size.filter(|s| *s < 8) {
            return bad(
                "visual_face_size",
                format!("expected at least 8 pixels (three 2x2 poolings), found {size}"),
            );
        }
        if self.classifier_class_weights.is_some()
            && !matches!(
                self.classifier_loss_fn.classifier,
                ClassifierLoss::Ce | ClassifierLoss::Cce
            )
        {
            return bad(
                "classifier_class_weights",
                format!(
                    "weights a cross-entropy loss (`ce` or `cce`), not `{}`",
                    self.classifier_loss_fn
                ),
            );
        }
        let plateau = self.lr_scheduler() == LrScheduler::Plateau;
        if !plateau
            && (self.classifier_plateau_factor.is_some()
                || self.classifier_plateau_patience.is_some())
        {
            let key = if self.classifier_plateau_factor.is_some() {
                "classifier_plateau_factor"
            } else {
                "classifier_plateau_patience"
            };
            return bad(
                key,
                "applies to `classifier_lr_scheduler: plateau` only".into(),
            );
        }
        if let Some(f) = self.classifier_plateau_factor {
            // written so that NaN is rejected too (PyTorch: factor must be < 1)
            if !(f > 0.0 && f < 1.0) {
                return bad(
                    "classifier_plateau_factor",
                    format!("expected a factor in (0, 1), found {f}"),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FACES: &str =
        "classifier_classes: [anger, joy]\nmodules_visual_encoder: face_cnn\nvisual_crop: faces\n";

    fn err(text: &str) -> String {
        Config::parse(Path::new("x.yml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn face_keys_are_checked() {
        let c = Config::parse(Path::new("x.yml"), FACES).unwrap();
        assert!(c.uses_faces() && c.uses_visual());
        assert_eq!((c.face_size(), c.face_features()), (48, 16));
        assert_eq!(c.plateau(), None);
        let e = err(&FACES.replace("visual_crop: faces\n", ""));
        assert!(
            e.contains("modules_visual_encoder") && e.contains("visual_crop: faces"),
            "{e}"
        );
        let e = err(
            "classifier_classes: [anger]\nmodules_visual_encoder: resnet50\nvisual_crop: faces\n",
        );
        assert!(e.contains("visual_crop"), "{e}");
        let e = err(&format!("{FACES}visual_face_size: 4\n"));
        assert!(e.contains("visual_face_size"), "{e}");
        let e = err(&format!(
            "{FACES}classifier_loss_fn: dice\nclassifier_class_weights: inverse_frequency\n"
        ));
        assert!(
            e.contains("classifier_class_weights") && e.contains("dice"),
            "{e}"
        );
        let e = err(&format!("{FACES}classifier_plateau_patience: 3\n"));
        assert!(
            e.contains("classifier_plateau_patience") && e.contains("plateau"),
            "{e}"
        );
        let e = err(&format!(
            "{FACES}classifier_lr_scheduler: plateau\nclassifier_plateau_factor: 1.5\n"
        ));
        assert!(e.contains("classifier_plateau_factor"), "{e}");
        let e = err(&format!("{FACES}classifier_lr_scheduler: cosine\n"));
        assert!(e.contains("plateau") && e.contains("linear"), "{e}");
        let p = Config::parse(
            Path::new("x.yml"),
            &format!("{FACES}classifier_lr_scheduler: plateau\nclassifier_plateau_patience: 2\n"),
        )
        .unwrap();
        assert_eq!(p.plateau(), Some((0.2, 2)));
        let again = Config::parse(Path::new("y.yml"), &p.to_yaml().unwrap()).unwrap();
        assert_eq!(again, p);
    }
}
