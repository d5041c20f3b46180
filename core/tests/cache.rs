//! The KV cache's layout: the first write kept as it comes, growth to
//! multiples of the step, and trims that leave stale positions behind.
use cider_core::cache::{KvCache, StandardCache};
use cider_core::mlx::{device, Array, Dtype};

/// Keys [1, 1, n, 2] whose position p holds (p, -p), starting at `from`.
fn positions(from: i32, n: i32) -> Array {
    let v: Vec<f32> = (from..from + n).flat_map(|p| [p as f32, -(p as f32)]).collect();
    Array::from_f32(&v, &[1, 1, n, 2]).unwrap()
}

fn firsts(a: &Array) -> Vec<f32> {
    a.to_vec_f32().unwrap().chunks(2).map(|c| c[0]).collect()
}

#[test]
fn first_write_is_kept_whole_and_later_writes_grow_by_steps() {
    device::set_gpu(false).unwrap();
    let mut c = StandardCache::stored_as(None);
    let (k, v) = c.update_and_fetch(&positions(0, 5), &positions(0, 5)).unwrap();
    assert_eq!(firsts(&k), (0..5).map(|p| p as f32).collect::<Vec<_>>());
    assert_eq!(firsts(&v), firsts(&k));
    // No room kept past the prompt.
    assert_eq!(c.state()[0].dim(2), 5);
    assert_eq!(c.nbytes(), 2 * 5 * 2 * 4);

    // The next write makes the buffer with room: 256 positions on the CPU.
    let (k, _) = c.update_and_fetch(&positions(5, 1), &positions(5, 1)).unwrap();
    assert_eq!(firsts(&k), (0..6).map(|p| p as f32).collect::<Vec<_>>());
    assert_eq!(c.state()[0].dim(2), 256);
    assert_eq!(c.offset(), 6);

    // A trim rewinds; the next write overwrites the stale positions.
    assert_eq!(c.trim(2), 2);
    let (k, _) = c.update_and_fetch(&positions(100, 1), &positions(100, 1)).unwrap();
    assert_eq!(firsts(&k), vec![0.0, 1.0, 2.0, 3.0, 100.0]);

    // Filling past the capacity grows to the next multiple of the step.
    let (k, _) = c.update_and_fetch(&positions(5, 300), &positions(5, 300)).unwrap();
    assert_eq!(c.offset(), 305);
    assert_eq!(c.state()[0].dim(2), 512);
    let got = firsts(&k);
    assert_eq!(got.len(), 305);
    assert_eq!(&got[..5], &[0.0, 1.0, 2.0, 3.0, 100.0]);
    assert_eq!(got[304], 304.0);

    // A cache that stores a narrower dtype hands entries back in the
    // compute dtype, from the first write on.
    let mut c = StandardCache::stored_as(Some(Dtype::BF16));
    let (k, v) = c.update_and_fetch(&positions(0, 3), &positions(0, 3)).unwrap();
    assert_eq!((k.dtype(), v.dtype()), (Dtype::F32, Dtype::F32));
    assert!(c.state().iter().all(|a| a.dtype() == Dtype::BF16));
    let (k, _) = c.update_and_fetch(&positions(3, 1), &positions(3, 1)).unwrap();
    assert_eq!(k.dtype(), Dtype::F32);
    assert_eq!(firsts(&k), vec![0.0, 1.0, 2.0, 3.0]);
    assert!(c.state().iter().all(|a| a.dtype() == Dtype::BF16 && a.dim(2) == 256));

    // A trimmed first write (capacity past the offset) grows from the offset.
    let mut c = StandardCache::stored_as(None);
    c.update_and_fetch(&positions(0, 4), &positions(0, 4)).unwrap();
    c.trim(1);
    let (k, _) = c.update_and_fetch(&positions(50, 2), &positions(50, 2)).unwrap();
    assert_eq!(firsts(&k), vec![0.0, 1.0, 2.0, 50.0, 51.0]);
    assert_eq!(c.state()[0].dim(2), 256);
}
