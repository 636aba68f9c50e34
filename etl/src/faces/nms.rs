//! Greedy non-maximum suppression (`py_cpu_nms`): take the highest-scoring box, drop every remaining box whose
//! IoU with it exceeds the threshold, repeat. f32 throughout, like the numpy original.
//!
//! Two area conventions: continuous (`(x2 − x1)·(y2 − y1)`) for the default profile, and py_cpu_nms's integer-pixel
//! `+1` convention (`(x2 − x1 + 1)·(y2 − y1 + 1)`, intersections likewise) that the reference uses.

/// How box areas are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Areas {
    /// `(x2 − x1)·(y2 − y1)`.
    Continuous,
    /// `(x2 − x1 + 1)·(y2 − y1 + 1)`: py_cpu_nms, as the reference runs it.
    PlusOne,
}

/// IoU of two boxes `[x1, y1, x2, y2]`.
pub fn iou(a: &[f32; 4], b: &[f32; 4], areas: Areas) -> f32 {
    let one = match areas {
        Areas::Continuous => 0.0,
        Areas::PlusOne => 1.0,
    };
    let area_a = (a[2] - a[0] + one) * (a[3] - a[1] + one);
    let area_b = (b[2] - b[0] + one) * (b[3] - b[1] + one);
    let w = (a[2].min(b[2]) - a[0].max(b[0]) + one).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1]) + one).max(0.0);
    let inter = w * h;
    inter / (area_a + area_b - inter)
}

/// Indices into `boxes` kept by NMS, highest score first. A box is dropped when its IoU with an already kept box
/// is greater than `threshold`. Equal scores keep their input order (a stable sort, as numpy's `kind="stable"`).
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], threshold: f32, areas: Areas) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len().min(scores.len())).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut keep = Vec::new();
    let mut suppressed = vec![false; order.len()];
    for (rank, &i) in order.iter().enumerate() {
        if suppressed[rank] {
            continue;
        }
        keep.push(i);
        for (later, &j) in order.iter().enumerate().skip(rank + 1) {
            if !suppressed[later] && iou(&boxes[i], &boxes[j], areas) > threshold {
                suppressed[later] = true;
            }
        }
    }
    keep
}
