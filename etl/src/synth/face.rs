//! `synth --face-image`: a real face in some clips, at a recorded place, for testing face detection end to end.
//!
//! The photo is cropped to the face with a head-and-shoulders margin, scaled (Lanczos) so the face is about
//! 22% of the frame height — a MELD-like close-up, ~53 px tall in a 240-px mosaic tile — converted to YUV 4:2:0
//! once, and drawn on top of every frame of the chosen clips at a fixed place. `synth-faces.csv` gives the face
//! box in clip pixels (1280x720).

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::imageops::FilterType;

use super::clip::{Picture, HEIGHT, WIDTH};
use super::signal::rgb_to_yuv;

/// The face's height in the clip, as a fraction of the frame height.
const FACE_HEIGHT_FRACTION: f64 = 0.22;

/// A face box `x1,y1,x2,y2` in pixels of the photo.
pub fn parse_face_box(s: &str) -> Result<[f64; 4], String> {
    let bad = || format!("expected x1,y1,x2,y2 (pixels), found `{s}`");
    let v: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    match v[..] {
        [x1, y1, x2, y2] if x2 > x1 && y2 > y1 && x1 >= 0.0 && y1 >= 0.0 => Ok([x1, y1, x2, y2]),
        _ => Err(bad()),
    }
}

/// The pasted picture, in YUV 4:2:0 with even width and height, and where the face is inside it.
#[derive(Debug, Clone)]
pub struct FacePatch {
    pub width: u32,
    pub height: u32,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
    /// The face box inside the patch, in patch pixels.
    pub face: [f64; 4],
}

impl FacePatch {
    /// Crops `photo` around `face_box` (photo pixels) and scales it for 1280x720 clips.
    pub fn from_photo(photo: &Path, face_box: [f64; 4]) -> Result<Self> {
        Self::from_photo_rolled(photo, face_box, 0.0)
    }

    /// [`FacePatch::from_photo`] with the head rolled by `degrees` (clockwise on screen) about the face's
    /// centre first (`synth --face-cues`); the recorded face box stays the upright one.
    pub fn from_photo_rolled(photo: &Path, face_box: [f64; 4], degrees: f64) -> Result<Self> {
        let mut image = image::open(photo)
            .with_context(|| format!("reading {}", photo.display()))?
            .to_rgb8();
        if degrees != 0.0 {
            let [x1, y1, x2, y2] = face_box;
            image = rotated(&image, ((x1 + x2) / 2.0, (y1 + y2) / 2.0), degrees);
        }
        let (pw, ph) = (image.width() as f64, image.height() as f64);
        let [x1, y1, x2, y2] = face_box;
        if x2 > pw || y2 > ph {
            bail!(
                "--face-box {x1},{y1},{x2},{y2} lies outside {} ({pw}x{ph})",
                photo.display()
            );
        }
        let (fw, fh) = (x2 - x1, y2 - y1);
        // Head and shoulders: the face plus half its width each side, a third of its height above and half below.
        let crop = [
            (x1 - 0.5 * fw).max(0.0).floor(),
            (y1 - fh / 3.0).max(0.0).floor(),
            (x2 + 0.5 * fw).min(pw).ceil(),
            (y2 + 0.5 * fh).min(ph).ceil(),
        ];
        let scale = HEIGHT as f64 * FACE_HEIGHT_FRACTION / fh;
        let even = |v: f64| ((v * scale / 2.0).round() as u32 * 2).max(2);
        let (width, height) = (even(crop[2] - crop[0]), even(crop[3] - crop[1]));
        if width > WIDTH || height > HEIGHT {
            bail!("the face crop of {} does not fit a clip", photo.display());
        }
        let cropped = image::imageops::crop_imm(
            &image,
            crop[0] as u32,
            crop[1] as u32,
            (crop[2] - crop[0]) as u32,
            (crop[3] - crop[1]) as u32,
        )
        .to_image();
        let scaled = image::imageops::resize(&cropped, width, height, FilterType::Lanczos3);
        // The scale actually applied on each axis (the patch size is rounded to even pixels).
        let (sx, sy) = (
            width as f64 / (crop[2] - crop[0]),
            height as f64 / (crop[3] - crop[1]),
        );
        let face = [
            (x1 - crop[0]) * sx,
            (y1 - crop[1]) * sy,
            (x2 - crop[0]) * sx,
            (y2 - crop[1]) * sy,
        ];
        let (w, h) = (width as usize, height as usize);
        let mut y = vec![0u8; w * h];
        let mut u = vec![0u8; w * h / 4];
        let mut v = vec![0u8; w * h / 4];
        for (x, row, pixel) in scaled.enumerate_pixels() {
            y[row as usize * w + x as usize] = rgb_to_yuv(pixel.0)[0];
        }
        // Chroma of each 2x2 block from the mean of its four pixels.
        for cy in 0..h / 2 {
            for cx in 0..w / 2 {
                let mut sum = [0u32; 3];
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let p = scaled
                        .get_pixel((2 * cx + dx) as u32, (2 * cy + dy) as u32)
                        .0;
                    for c in 0..3 {
                        sum[c] += p[c] as u32;
                    }
                }
                let [_, cu, cv] = rgb_to_yuv(sum.map(|s| ((s + 2) / 4) as u8));
                u[cy * (w / 2) + cx] = cu;
                v[cy * (w / 2) + cx] = cv;
            }
        }
        Ok(FacePatch {
            width,
            height,
            y,
            u,
            v,
            face,
        })
    }

    /// Draws the patch with its top-left corner at (`x0`, `y0`) (even, inside the picture).
    pub fn draw(&self, picture: &mut Picture, x0: u32, y0: u32) {
        let (pw, w, h) = (WIDTH as usize, self.width as usize, self.height as usize);
        let (x0, y0) = (x0 as usize & !1, y0 as usize & !1);
        for row in 0..h.min(HEIGHT as usize - y0) {
            let at = (y0 + row) * pw + x0;
            let n = w.min(pw - x0);
            picture.y[at..at + n].copy_from_slice(&self.y[row * w..row * w + n]);
        }
        let (cpw, cw) = (pw / 2, w / 2);
        for row in 0..(h / 2).min(HEIGHT as usize / 2 - y0 / 2) {
            let at = (y0 / 2 + row) * cpw + x0 / 2;
            let n = cw.min(cpw - x0 / 2);
            picture.u[at..at + n].copy_from_slice(&self.u[row * cw..row * cw + n]);
            picture.v[at..at + n].copy_from_slice(&self.v[row * cw..row * cw + n]);
        }
    }
}

/// The head roll of `synth --face-cues` for a clip whose visual cue is `emotion`: 8° steps from −24° to 24°,
/// upright for neutral. RetinaFace finds faces rolled this far; the landmarks' geometry relative to the box and
/// the crop's look both carry it.
pub fn roll_degrees(emotion: meld_shared::Emotion) -> f64 {
    use meld_shared::Emotion::*;
    match emotion {
        Anger => -24.0,
        Disgust => -16.0,
        Fear => -8.0,
        Neutral => 0.0,
        Joy => 8.0,
        Sadness => 16.0,
        Surprise => 24.0,
    }
}

/// `image` rotated by `degrees` about `centre` (bilinear; pixels from outside take the nearest edge's).
fn rotated(image: &image::RgbImage, centre: (f64, f64), degrees: f64) -> image::RgbImage {
    let (w, h) = image.dimensions();
    let (sin, cos) = degrees.to_radians().sin_cos();
    let at = |x: i64, y: i64| {
        let p = image.get_pixel(
            x.clamp(0, w as i64 - 1) as u32,
            y.clamp(0, h as i64 - 1) as u32,
        );
        p.0.map(f64::from)
    };
    image::RgbImage::from_fn(w, h, |x, y| {
        // the source of output pixel (x, y): rotate back about the centre
        let (dx, dy) = (x as f64 - centre.0, y as f64 - centre.1);
        let sx = centre.0 + cos * dx + sin * dy;
        let sy = centre.1 - sin * dx + cos * dy;
        let (x0, y0) = (sx.floor(), sy.floor());
        let (fx, fy) = (sx - x0, sy - y0);
        let (x0, y0) = (x0 as i64, y0 as i64);
        let mut out = [0u8; 3];
        let (a, b, c, d) = (
            at(x0, y0),
            at(x0 + 1, y0),
            at(x0, y0 + 1),
            at(x0 + 1, y0 + 1),
        );
        for k in 0..3 {
            let top = a[k] * (1.0 - fx) + b[k] * fx;
            let bottom = c[k] * (1.0 - fx) + d[k] * fx;
            out[k] = (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8;
        }
        image::Rgb(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_turns_the_picture_about_the_centre() {
        let mut image = image::RgbImage::from_pixel(21, 21, image::Rgb([0, 0, 0]));
        image.put_pixel(15, 10, image::Rgb([255, 255, 255]));
        // 90° clockwise on screen (y down): the pixel right of the centre goes below it
        let r = rotated(&image, (10.0, 10.0), 90.0);
        assert_eq!(r.get_pixel(10, 15).0, [255, 255, 255]);
        assert_eq!(r.get_pixel(15, 10).0, [0, 0, 0]);
        assert_eq!(rotated(&image, (10.0, 10.0), 0.0), image);
    }

    #[test]
    fn face_boxes_parse() {
        assert_eq!(
            parse_face_box("180,72,271,178").unwrap(),
            [180.0, 72.0, 271.0, 178.0]
        );
        for bad in ["180,72,271", "271,72,180,178", "a,b,c,d", "-1,0,5,5"] {
            assert!(parse_face_box(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_patch_keeps_the_face_where_it_says() {
        // A grey photo with a white "face": after scaling, the recorded face box must cover the white pixels.
        let dir = tempfile::tempdir().unwrap();
        let photo = dir.path().join("photo.png");
        let mut image = image::RgbImage::from_pixel(200, 160, image::Rgb([60, 60, 60]));
        for y in 40..100 {
            for x in 80..130 {
                image.put_pixel(x, y, image::Rgb([255, 255, 255]));
            }
        }
        image.save(&photo).unwrap();
        let patch = FacePatch::from_photo(&photo, [80.0, 40.0, 130.0, 100.0]).unwrap();
        assert_eq!((patch.width % 2, patch.height % 2), (0, 0));
        let face_height = patch.face[3] - patch.face[1];
        assert!(
            (face_height - HEIGHT as f64 * FACE_HEIGHT_FRACTION).abs() < 2.0,
            "{face_height}"
        );
        // Luma inside the recorded box is white, outside (away from the Lanczos ringing) grey.
        let luma = |x: f64, y: f64| patch.y[y as usize * patch.width as usize + x as usize];
        let [x1, y1, x2, y2] = patch.face;
        assert!(luma((x1 + x2) / 2.0, (y1 + y2) / 2.0) > 230);
        assert!(luma(x1 + 4.0, y1 + 4.0) > 230 && luma(x2 - 4.0, y2 - 4.0) > 230);
        assert!(luma(x1 - 6.0, (y1 + y2) / 2.0) < 80 && luma(x2 + 6.0, (y1 + y2) / 2.0) < 80);
        assert!(FacePatch::from_photo(&photo, [80.0, 40.0, 230.0, 100.0]).is_err());
    }
}
