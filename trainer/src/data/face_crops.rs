//! `visual_crop: faces` (seed system 3): each frame's face as `meld-etl extract --faces` located it in
//! `<split>/faces.csv` (box, score and 5 RetinaFace landmarks per face, in mosaic pixels), cut from the row's
//! mosaic (`x_visual`, one tile per frame).
//!
//! Per frame: the highest-scoring face of the tile; its box (clamped to the tile) resized to S x S (Triangle
//! filter, the box's aspect not kept: FER2013's faces are square crops of a similar region), grey by BT.601 luma
//! (PIL's `convert("L")`), scaled to [0, 1]; and its landmarks as (x − x1)/(x2 − x1), (y − y1)/(y2 − y1) —
//! position and size of the face removed, its geometry kept — standardised by the training faces' statistics
//! ([`fit_landmark_stats`]).
//!
//! A frame without a face is a zero crop, zero landmarks and mask 0: the encoders average their per-frame
//! features over the frames with a face only, and a row with no face in any frame gets the zero vector (and is
//! counted as a row without an image, `missing_visual`, in the epoch records). A row without a mosaic counts
//! the same. Nothing is dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use meld_shared::dataset::media_path;

use super::dataset::SplitData;
use crate::error::{Error, Result};

pub use super::faces::{FaceSpec, FrameFace, LandmarkStats, RowFaces, FRAMES, LANDMARK_VALUES};

/// Standardises the landmarks by the training split's statistics (`train`: its rows' faces, after
/// [`SplitData::load_faces`]). Why: a face's pose moves its normalised landmarks by a few hundredths of the box;
/// through the seed's chain of sigmoid layers such inputs barely move the features, and NN2 did not train on the
/// synthetic data (it predicted the majority class) until its inputs had unit spread — as the mosaics are
/// normalised with the training mosaics' statistics. Computed from the split at hand each time the data is
/// prepared (the same training CSV gives the same numbers).
pub fn fit_landmark_stats(prep: &mut super::Preprocess, train: &SplitData) {
    let Some(spec) = prep.faces.as_mut() else {
        return;
    };
    let frames: Vec<[f32; LANDMARK_VALUES]> = train
        .faces
        .iter()
        .flat_map(|row| row.iter().flatten().map(box_normalised))
        .collect();
    if frames.len() < 2 {
        return;
    }
    let n = frames.len() as f64;
    let mut mean = [0f32; LANDMARK_VALUES];
    let mut std = [1f32; LANDMARK_VALUES];
    for k in 0..LANDMARK_VALUES {
        let m = frames.iter().map(|f| f[k] as f64).sum::<f64>() / n;
        let var = frames
            .iter()
            .map(|f| (f[k] as f64 - m).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        mean[k] = m as f32;
        std[k] = var.sqrt().max(1e-3) as f32;
    }
    tracing::info!("landmarks standardised by the training faces: mean {mean:?}, std {std:?}");
    spec.landmark_stats = Some((mean, std));
}

/// A face's landmarks as (x − x1)/(x2 − x1), (y − y1)/(y2 − y1).
fn box_normalised(face: &FrameFace) -> [f32; LANDMARK_VALUES] {
    let [x1, y1, x2, y2] = face.bbox;
    let (w, h) = ((x2 - x1).max(1e-3), (y2 - y1).max(1e-3));
    let mut out = [0f32; LANDMARK_VALUES];
    for k in 0..5 {
        out[2 * k] = (face.landmarks[2 * k] - x1) / w;
        out[2 * k + 1] = (face.landmarks[2 * k + 1] - y1) / h;
    }
    out
}

/// A batch's face inputs.
pub struct FaceBatch {
    /// (B, F, 1, S, S) grey crops in [0, 1] (S = 1, zeros, without the CNN).
    pub crops: Tensor,
    /// (B, F, 10) landmarks normalised to the face box.
    pub landmarks: Tensor,
    /// (B, F) 1 where the frame has a face.
    pub mask: Tensor,
}

/// The `faces.csv` of a split's dataset CSV (`<data>/<split>/faces.csv`).
pub fn faces_csv(data: &SplitData) -> PathBuf {
    data.csv
        .parent()
        .unwrap_or(Path::new("."))
        .join(data.split.dataset_name())
        .join("faces.csv")
}

/// Reads a split's `faces.csv`: (dialogue, utterance) → the best face of each frame. A missing file is an error
/// that names the command making it; a bad value names its line and column.
pub fn read_faces(path: &Path) -> Result<HashMap<(u32, u32), RowFaces>> {
    if !path.is_file() {
        return Err(Error::data(
            path,
            "missing: `visual_crop: faces` reads the faces that `meld-etl extract --faces MODEL.onnx` writes \
             (it reuses the mosaics already extracted)",
        ));
    }
    let mut reader = csv::Reader::from_path(path).map_err(|e| Error::data(path, e.to_string()))?;
    let headers = reader
        .headers()
        .map_err(|e| Error::data(path, e.to_string()))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| Error::data(path, format!("no column `{name}`")))
    };
    let mut value_columns = Vec::new();
    for name in ["x1", "y1", "x2", "y2", "score"] {
        value_columns.push(column(name)?);
    }
    for k in 1..=5 {
        value_columns.push(column(&format!("lm{k}_x"))?);
        value_columns.push(column(&format!("lm{k}_y"))?);
    }
    let (dialogue, utterance, tile) = (
        column("dialogue_id")?,
        column("utterance_id")?,
        column("tile")?,
    );
    let mut faces: HashMap<(u32, u32), RowFaces> = HashMap::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record.map_err(|e| Error::data(path, format!("line {line}: {e}")))?;
        let field = |c: usize| record.get(c).unwrap_or("");
        let int = |c: usize| {
            field(c).parse::<u32>().map_err(|_| {
                Error::data(
                    path,
                    format!(
                        "line {line}, column `{}`: expected an integer, found `{}`",
                        &headers[c],
                        field(c)
                    ),
                )
            })
        };
        let mut v = [0f32; 15];
        for (slot, c) in v.iter_mut().zip(&value_columns) {
            *slot = field(*c)
                .parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| {
                    Error::data(
                        path,
                        format!(
                            "line {line}, column `{}`: expected a number, found `{}`",
                            &headers[*c],
                            field(*c)
                        ),
                    )
                })?;
        }
        let t = int(tile)? as usize;
        if t >= FRAMES {
            return Err(Error::data(
                path,
                format!(
                    "line {line}: tile {t}, but the mosaics have {FRAMES} frames (tiles 0 to {})",
                    FRAMES - 1
                ),
            ));
        }
        let face = FrameFace {
            bbox: [v[0], v[1], v[2], v[3]],
            score: v[4],
            landmarks: v[5..15].try_into().unwrap_or([0.0; LANDMARK_VALUES]),
        };
        let row = faces.entry((int(dialogue)?, int(utterance)?)).or_default();
        if row[t].is_none_or(|best| face.score > best.score) {
            row[t] = Some(face);
        }
    }
    Ok(faces)
}

/// The faces of every row of `data` (in row order), from its `faces.csv`.
pub fn load_split_faces(data: &SplitData) -> Result<Vec<RowFaces>> {
    let faces = read_faces(&faces_csv(data))?;
    Ok(data
        .rows
        .iter()
        .map(|r| {
            faces
                .get(&(r.dialogue, r.sequence))
                .copied()
                .unwrap_or_default()
        })
        .collect())
}

impl SplitData {
    /// With `visual_crop: faces`, reads the split's `faces.csv` (the rows' faces); logs how many rows have a
    /// face. Without it, nothing.
    pub fn load_faces(&mut self, prep: &super::Preprocess) -> Result<()> {
        if prep.faces.is_none() {
            return Ok(());
        }
        self.faces = load_split_faces(self)?;
        let with_face = self
            .faces
            .iter()
            .zip(&self.rows)
            .filter(|(f, r)| r.x_visual.is_some() && f.iter().any(Option::is_some))
            .count();
        tracing::info!(
            "{}: {with_face} of {} rows have a face in at least one frame (the others: zero crops, mask 0)",
            self.split,
            self.rows.len()
        );
        Ok(())
    }
}

/// The grey S x S crop of each frame's face of a mosaic (zeros where a frame has none), frame after frame.
pub fn crop_faces(mosaic: &Path, faces: &RowFaces, size: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; FRAMES * size * size];
    if faces.iter().all(Option::is_none) {
        return Ok(out);
    }
    let image = image::open(mosaic)
        .map_err(|e| Error::data(mosaic, format!("cannot decode the image: {e}")))?
        .to_rgb8();
    let (w, h) = image.dimensions();
    let tile_h = h as f32 / FRAMES as f32;
    for (f, face) in faces.iter().enumerate() {
        let Some(face) = face else { continue };
        let top = f as f32 * tile_h;
        let [x1, y1, x2, y2] = face.bbox;
        let x1 = x1.clamp(0.0, w as f32 - 1.0).floor() as u32;
        let y1 = y1.clamp(top, top + tile_h - 1.0).floor() as u32;
        let x2 = (x2.clamp(0.0, w as f32).ceil() as u32).max(x1 + 1);
        let y2 = (y2.clamp(top, top + tile_h).ceil() as u32).max(y1 + 1);
        let cut = image::imageops::crop_imm(&image, x1, y1, x2 - x1, y2 - y1).to_image();
        let resized = image::imageops::resize(
            &cut,
            size as u32,
            size as u32,
            image::imageops::FilterType::Triangle,
        );
        let plane = &mut out[f * size * size..(f + 1) * size * size];
        for (x, y, p) in resized.enumerate_pixels() {
            let [r, g, b] = p.0.map(f32::from);
            plane[y as usize * size + x as usize] = (0.299 * r + 0.587 * g + 0.114 * b) / 255.0;
        }
    }
    Ok(out)
}

/// Each frame's landmarks normalised to its face box, then standardised by `stats` when given (zeros where a
/// frame has none), frame after frame.
pub fn normalised_landmarks(faces: &RowFaces, stats: Option<&LandmarkStats>) -> Vec<f32> {
    let mut out = vec![0f32; FRAMES * LANDMARK_VALUES];
    for (f, face) in faces.iter().enumerate() {
        let Some(face) = face else { continue };
        let values = box_normalised(face);
        for k in 0..LANDMARK_VALUES {
            out[f * LANDMARK_VALUES + k] = match stats {
                Some((mean, std)) => (values[k] - mean[k]) / std[k],
                None => values[k],
            };
        }
    }
    out
}

/// The face inputs of a batch's rows; also how many rows have no face in any frame (or no mosaic).
pub fn face_batch(
    data: &SplitData,
    spec: FaceSpec,
    indices: &[usize],
) -> Result<(FaceBatch, usize)> {
    use rayon::prelude::*;
    // without the CNN, 1-pixel zero crops: no mosaic is decoded
    let s = if spec.crops { spec.size } else { 1 };
    let none: RowFaces = Default::default();
    let items: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = indices
        .par_iter()
        .map(|i| {
            let row = &data.rows[*i];
            let faces = match (&row.x_visual, data.faces.get(*i)) {
                (Some(_), Some(faces)) => faces,
                _ => &none,
            };
            let crops = match &row.x_visual {
                Some(cell) if spec.crops => crop_faces(&media_path(&data.csv, cell), faces, s)?,
                _ => vec![0f32; FRAMES * s * s],
            };
            let mask = faces
                .iter()
                .map(|f| f32::from(u8::from(f.is_some())))
                .collect();
            Ok((
                crops,
                normalised_landmarks(faces, spec.landmark_stats.as_ref()),
                mask,
            ))
        })
        .collect::<Result<_>>()?;
    let b = indices.len();
    let mut crops = Vec::with_capacity(b * FRAMES * s * s);
    let mut landmarks = Vec::with_capacity(b * FRAMES * LANDMARK_VALUES);
    let mut mask = Vec::with_capacity(b * FRAMES);
    let mut faceless = 0;
    for (c, l, m) in items {
        faceless += usize::from(m.iter().all(|v| *v == 0.0));
        crops.extend(c);
        landmarks.extend(l);
        mask.extend(m);
    }
    let cpu = &Device::Cpu;
    Ok((
        FaceBatch {
            crops: Tensor::from_vec(crops, (b, FRAMES, 1, s, s), cpu)?,
            landmarks: Tensor::from_vec(landmarks, (b, FRAMES, LANDMARK_VALUES), cpu)?,
            mask: Tensor::from_vec(mask, (b, FRAMES), cpu)?,
        },
        faceless,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faces_csv_keeps_each_frames_best_face_and_names_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faces.csv");
        let header = "split,dialogue_id,utterance_id,tile,x1,y1,x2,y2,score,lm1_x,lm1_y,lm2_x,lm2_y,lm3_x,lm3_y,lm4_x,lm4_y,lm5_x,lm5_y\n";
        std::fs::write(
            &path,
            format!(
                "{header}train,0,1,2,10,490,50,540,0.9,20,500,40,500,30,515,22,530,38,530\n\
                 train,0,1,2,0,480,5,485,0.6,1,1,1,1,1,1,1,1,1,1\n"
            ),
        )
        .unwrap();
        let faces = read_faces(&path).unwrap();
        let row = faces[&(0, 1)];
        assert!(row[0].is_none() && row[2].is_some_and(|f| f.score == 0.9));
        let lm = normalised_landmarks(&row, None);
        assert_eq!(
            &lm[20..30],
            &[0.25, 0.2, 0.75, 0.2, 0.5, 0.5, 0.3, 0.8, 0.7, 0.8]
        );
        assert!(lm[..20].iter().all(|v| *v == 0.0));
        std::fs::write(
            &path,
            format!("{header}train,0,1,2,10,x,50,540,0.9,20,500,40,500,30,515,22,530,38,530\n"),
        )
        .unwrap();
        let e = read_faces(&path).unwrap_err().to_string();
        assert!(
            e.contains("faces.csv") && e.contains("line 2") && e.contains("y1"),
            "{e}"
        );
        let e = read_faces(&dir.path().join("none.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--faces"), "{e}");
    }

    #[test]
    fn crops_are_the_grey_face_box_of_their_tile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.png");
        // 40 x 100 mosaic of 5 tiles of 20 rows; tile 1 has a white 10x10 square at x 10..20, y 25..35
        let img = image::RgbImage::from_fn(40, 100, |x, y| {
            if (10..20).contains(&x) && (25..35).contains(&y) {
                image::Rgb([255, 255, 255])
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        img.save(&path).unwrap();
        let face = FrameFace {
            score: 1.0,
            bbox: [10.0, 25.0, 20.0, 35.0],
            landmarks: [0.0; 10],
        };
        let faces: RowFaces = [None, Some(face), None, None, None];
        let crops = crop_faces(&path, &faces, 8).unwrap();
        assert_eq!(crops.len(), 5 * 64);
        assert!(
            crops[64..128].iter().all(|v| (*v - 1.0).abs() < 1e-4),
            "{:?}",
            &crops[64..128]
        );
        assert!(crops[..64].iter().chain(&crops[128..]).all(|v| *v == 0.0));
    }
}
