//! Images in shared memory (feature `image`): an [`image::ImageBuffer`] whose storage is a
//! [`SharedArray`], decoded straight into it from a PNG/JPEG file, processed by a pool in row bands,
//! and saved with the `image` crate.
//!
//! ```
//! use image::{Luma, Rgb};
//! use mproc::integrations::image::{map_bands, BandMut, ImageView, SharedImage};
//!
//! // BT.601 luma of each pixel of the band.
//! fn gray(input: ImageView<Rgb<u8>>, mut band: BandMut<Luma<u8>>, first_row: u32) {
//!     for (x, y, px) in band.enumerate_pixels_mut() {
//!         let [r, g, b] = input.get_pixel(x, first_row + y).0.map(u32::from);
//!         *px = Luma([((77 * r + 150 * g + 29 * b) >> 8) as u8]);
//!     }
//! }
//!
//! let pool = mproc::Pool::builder().workers(2).build()?;
//! let card = image::RgbImage::from_fn(64, 48, |x, y| Rgb([x as u8 * 4, y as u8 * 5, 128]));
//! let shared: SharedImage<Rgb<u8>> = mproc::integrations::image::from_image(&card)?;
//! let g = map_bands(&pool, &shared, 16, gray)?; // 3 tasks of 16 rows; pixels never travel
//! assert_eq!(g.dimensions(), (64, 48));
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! # Decoding without a copy
//! [`open`] asks the file's decoder for its pixel type; if it is the `P` asked for, the decoder writes
//! straight into the shared buffer (no intermediate `Vec`). Otherwise the image is decoded by the
//! `image` crate and converted (one conversion, as `image::open(..).into_rgb8()` would do), then
//! copied in. The `image` crate's default limits apply (512 MiB per allocation, among others), to the
//! shared buffer and to the decoder's output before a conversion too, and to a JPEG file's length
//! (its decoder reads the whole file into memory first).
//!
//! # Hostile files
//! A malformed file is [`Error::BadFile`]. A PNG whose palette is not a whole number of entries is
//! refused before decoding (it makes `png` 0.18.1 panic), and a panic of a decoder on some other file
//! is turned into `BadFile` too (except under `panic = "abort"`, where nothing can be caught).
//!
//! # Functions
//! The function given to [`map_bands`] runs in the workers, where it travels as a signed function
//! pointer: a `fn` item or a closure that captures nothing (see [`crate::integrations::ndarray`]).

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use bytemuck::Pod;
use image::{
    DynamicImage, ExtendedColorType, ImageBuffer, ImageDecoder, ImageError, ImageReader, Pixel,
    PixelWithColorType,
};

use crate::error::{Error, FileProblem, Result};
use crate::heap::SharedArray;
use crate::pool::via::{transform_via_fn, TransformVia};
use crate::pool::Pool;

/// An image whose pixels live in shared memory.
///
/// # Examples
/// ```
/// use mproc::integrations::image::{new_image, SharedImage};
/// let mut img: SharedImage<image::Rgb<u8>> = new_image(2, 2)?;
/// img.put_pixel(1, 1, image::Rgb([1, 2, 3]));
/// assert_eq!(&img.as_raw()[9..], &[1, 2, 3]);
/// # Ok::<(), mproc::Error>(())
/// ```
pub type SharedImage<P> = ImageBuffer<P, SharedArray<<P as Pixel>::Subpixel>>;
/// What a band task reads: the whole input image, in place.
///
/// # Examples
/// ```
/// let pixels = [1u8, 2, 3, 4];
/// let view: mproc::integrations::image::ImageView<image::Luma<u8>> =
///     image::ImageBuffer::from_raw(2, 2, &pixels[..]).unwrap();
/// assert_eq!(view.get_pixel(1, 1).0, [4]);
/// ```
pub type ImageView<'a, P> = ImageBuffer<P, &'a [<P as Pixel>::Subpixel]>;
/// What a band task writes: its band of output rows, in place.
///
/// # Examples
/// ```
/// let mut pixels = [0u8; 4];
/// let mut band: mproc::integrations::image::BandMut<image::Luma<u8>> =
///     image::ImageBuffer::from_raw(2, 2, &mut pixels[..]).unwrap();
/// band.put_pixel(0, 1, image::Luma([7]));
/// assert_eq!(pixels, [0, 0, 7, 0]);
/// ```
pub type BandMut<'a, P> = ImageBuffer<P, &'a mut [<P as Pixel>::Subpixel]>;

/// [`Error::BadFile`] for `path`, saying `why`.
fn bad_image(path: &Path, why: impl Into<String>) -> Error {
    Error::BadFile {
        path: path.display().to_string(),
        problem: FileProblem::Image(why.into()),
    }
}

/// Runs one call into a third-party decoder; a panic in it (a bug of the decoder, on a malformed file)
/// becomes [`Error::BadFile`] instead of unwinding through the caller. The decoder and everything it
/// wrote are dropped by the caller on that error. Under `panic = "abort"` nothing can be caught: the
/// checks before decoding ([`check_png_chunks`]) are what keep the known cases from getting here.
fn guarded<T>(path: &Path, decode: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(decode))
        .unwrap_or_else(|_| Err(bad_image(path, "the image decoder panicked on this file")))
}

/// Refuses a PNG file with a `PLTE` chunk whose length is not a whole number of RGB entries, which
/// the PNG specification forbids and which makes `png` 0.18.1 panic when it expands the palette
/// (image-rs/image-png#694; found by fuzzing). Walks the chunk headers only, seeking over their data:
/// at most one step per 12 bytes of file, however the lengths are forged, and none past the first
/// chunk the decoder refuses for its type. Anything that is not a well-formed chunk sequence is left
/// to the decoder to refuse.
fn check_png_chunks(path: &Path, file: &File) -> Result<()> {
    let mut r = BufReader::new(file);
    let mut signature = [0u8; 8];
    if r.read_exact(&mut signature).is_err() || signature != *b"\x89PNG\r\n\x1a\n" {
        return Ok(());
    }
    let mut head = [0u8; 8];
    while r.read_exact(&mut head).is_ok() {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        match &head[4..] {
            b"PLTE" if len % 3 != 0 => {
                return Err(bad_image(
                    path,
                    format!("a PLTE chunk of {len} bytes, not a whole number of RGB entries"),
                ))
            }
            b"IEND" => return Ok(()),
            // A critical chunk the decoder does not know (the case of the type's first letter, bit
            // 5, says which are critical) is where it refuses the file, so no palette past it is
            // ever expanded: the walk ends there too. Found by review: it went on to the end of the
            // file, and a PNG signature before a hole of a terabyte (a sparse file: zero-length
            // chunks of type `\0\0\0\0`) was read 12 bytes at a time for hours.
            t if t[0] & 0x20 == 0 && !matches!(t, b"IHDR" | b"PLTE" | b"IDAT") => return Ok(()),
            _ => {}
        }
        // The data and the CRC; a length past the end of the file ends the walk at the next read.
        if r.seek_relative(i64::from(len) + 4).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

fn image_error(path: &Path, e: ImageError) -> Error {
    match e {
        ImageError::IoError(source) => Error::Os {
            op: "read image".into(),
            source,
        },
        other => Error::BadFile {
            path: path.display().to_string(),
            problem: FileProblem::Image(other.to_string()),
        },
    }
}

/// The number of subpixels of a `width × height` image of `P`, checked.
fn subpixels<P: Pixel>(width: u32, height: u32) -> Result<usize> {
    usize::try_from(width)
        .ok()
        .and_then(|w| w.checked_mul(usize::try_from(height).ok()?))
        .and_then(|n| n.checked_mul(usize::from(P::CHANNEL_COUNT)))
        .ok_or_else(|| Error::Shape(format!("a {width}x{height} image overflows")))
}

/// A black `width × height` image in shared memory.
///
/// # Errors
/// [`Error::Shape`] if its size overflows; as [`SharedArray::zeroed`].
///
/// # Examples
/// ```
/// let img = mproc::integrations::image::new_image::<image::Rgba<u8>>(4, 3)?;
/// assert_eq!(img.as_raw().len(), 48);
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn new_image<P>(width: u32, height: u32) -> Result<SharedImage<P>>
where
    P: Pixel,
    P::Subpixel: Pod,
{
    let data = SharedArray::zeroed(subpixels::<P>(width, height)?)?;
    Ok(ImageBuffer::from_raw(width, height, data).expect("sized for these dimensions"))
}

/// A copy of `img` in shared memory (one `memcpy`).
///
/// # Errors
/// [`Error::Shape`] if `img`'s buffer is shorter than its dimensions say; as
/// [`SharedArray::from_slice`].
///
/// # Examples
/// ```
/// let img = image::GrayImage::from_pixel(3, 2, image::Luma([9]));
/// let shared = mproc::integrations::image::from_image(&img)?;
/// assert_eq!(shared.as_raw().iter().map(|&v| u32::from(v)).sum::<u32>(), 54);
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn from_image<P, C>(img: &ImageBuffer<P, C>) -> Result<SharedImage<P>>
where
    P: Pixel,
    P::Subpixel: Pod,
    C: std::ops::Deref<Target = [P::Subpixel]>,
{
    let (w, h) = img.dimensions();
    let n = subpixels::<P>(w, h)?;
    let raw = img
        .as_raw()
        .get(..n)
        .ok_or_else(|| Error::Shape(format!("a {w}x{h} image with a short buffer")))?;
    let data = SharedArray::from_slice(raw)?;
    Ok(ImageBuffer::from_raw(w, h, data).expect("sized for these dimensions"))
}

/// Decodes a PNG or JPEG file (any format the `image` crate was built with; the format is guessed
/// from the contents) into shared memory, as pixels of `P`: straight into the shared buffer when the
/// file holds `P`s, otherwise converted (see the [module docs](self#decoding-without-a-copy)).
///
/// # Errors
/// [`Error::BadFile`] with [`FileProblem::Image`] if the file cannot be decoded (unknown format,
/// corrupt data, over the limits); [`Error::Os`] if it cannot be read; [`Error::Shape`] if its size
/// overflows; as [`SharedArray::zeroed`].
///
/// # Examples
/// ```
/// use image::Rgb;
///
/// let path = std::env::temp_dir().join(format!("mproc-doc-open-{}.png", std::process::id()));
/// image::RgbImage::from_pixel(8, 4, Rgb([1, 2, 3])).save(&path).unwrap();
/// let img = mproc::integrations::image::open::<Rgb<u8>>(&path)?; // decoded into shared memory
/// assert_eq!(img.get_pixel(7, 3), &Rgb([1, 2, 3]));
/// let gray = mproc::integrations::image::open::<image::Luma<u8>>(&path)?; // converted
/// assert_eq!(gray.dimensions(), (8, 4));
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn open<P>(path: impl AsRef<Path>) -> Result<SharedImage<P>>
where
    P: PixelWithColorType,
    P::Subpixel: Pod,
{
    let path = path.as_ref();
    // Opened once, and only if it is a regular file: a FIFO would block the open (or the decoder)
    // forever, and a device would be read. The palette check and the decoder read this same file.
    let (mut file, id) = crate::sys::filemap::open_regular(path, false)?;
    check_png_chunks(path, &file)?;
    file.rewind().map_err(|e| Error::os("read image", e))?;
    let mut reader = ImageReader::new(BufReader::new(file));
    // The extension first, as `ImageReader::open` does (some formats have no signature), then the
    // signature wherever it is known.
    if let Ok(format) = image::ImageFormat::from_path(path) {
        reader.set_format(format);
    }
    let reader = reader
        .with_guessed_format()
        .map_err(|e| Error::os("read image", e))?;
    // The JPEG decoder reads the whole file into a `Vec` before it looks at it: the same limit as for
    // every buffer, on the file's length (found by review: a JPEG signature before a sparse hole of
    // gigabytes was read into memory whole, however little of it the decoder would have used).
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        image::Limits::default()
            .reserve(id.len)
            .map_err(|e| image_error(path, e))?;
    }
    let decoder = reader.into_decoder().map_err(|e| image_error(path, e))?;
    let (w, h) = decoder.dimensions();
    let n = subpixels::<P>(w, h)?;
    // The `image` crate's limits guard the buffers it allocates, not this one: without the same check
    // here, a file of a few dozen bytes claiming 40000 x 40000 pixels would have us make a shared
    // array of 4.8 GB, and a well-compressed one would have the decoder fill it.
    image::Limits::default()
        .reserve_usize(n.saturating_mul(std::mem::size_of::<P::Subpixel>()))
        .map_err(|e| image_error(path, e))?;
    let mut data = SharedArray::<P::Subpixel>::zeroed(n)?;
    if ExtendedColorType::from(decoder.color_type()) == P::COLOR_TYPE {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut data);
        if decoder.total_bytes() != bytes.len() as u64 {
            return Err(image_error(
                path,
                ImageError::Unsupported(image::error::UnsupportedError::from_format_and_kind(
                    image::error::ImageFormatHint::Unknown,
                    image::error::UnsupportedErrorKind::GenericFeature(
                        "a decoder whose size disagrees with its dimensions".into(),
                    ),
                )),
            ));
        }
        guarded(path, || {
            decoder.read_image(bytes).map_err(|e| image_error(path, e))
        })?;
    } else {
        // The decoder's whole output is allocated as it is (then converted into the shared buffer):
        // the same limit for it, as `ImageReader::decode` reserves it (a 41-byte PNG claiming
        // 5892 x 65540 RGB, asked for as `Luma<u8>`, made a 1.16 GB `Vec`; found by fuzzing).
        image::Limits::default()
            .reserve(decoder.total_bytes())
            .map_err(|e| image_error(path, e))?;
        let decoded = guarded(path, || {
            DynamicImage::from_decoder(decoder).map_err(|e| image_error(path, e))
        })?;
        let converted = convert::<P>(decoded).ok_or_else(|| {
            image_error(
                path,
                ImageError::Unsupported(image::error::UnsupportedError::from_format_and_kind(
                    image::error::ImageFormatHint::Unknown,
                    image::error::UnsupportedErrorKind::Color(P::COLOR_TYPE),
                )),
            )
        })?;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut data);
        let src = converted.as_bytes();
        if src.len() != bytes.len() {
            return Err(Error::Shape(format!(
                "{}: converted to {} bytes, not {}",
                path.display(),
                src.len(),
                bytes.len()
            )));
        }
        bytes.copy_from_slice(src);
    }
    Ok(ImageBuffer::from_raw(w, h, data).expect("sized for these dimensions"))
}

/// `img` converted to the color type of `P` (the `image` crate's conversions), if it has one.
fn convert<P: PixelWithColorType>(img: DynamicImage) -> Option<DynamicImage> {
    use ExtendedColorType as E;
    Some(match P::COLOR_TYPE {
        E::L8 => DynamicImage::ImageLuma8(img.into_luma8()),
        E::La8 => DynamicImage::ImageLumaA8(img.into_luma_alpha8()),
        E::Rgb8 => DynamicImage::ImageRgb8(img.into_rgb8()),
        E::Rgba8 => DynamicImage::ImageRgba8(img.into_rgba8()),
        E::L16 => DynamicImage::ImageLuma16(img.into_luma16()),
        E::La16 => DynamicImage::ImageLumaA16(img.into_luma_alpha16()),
        E::Rgb16 => DynamicImage::ImageRgb16(img.into_rgb16()),
        E::Rgba16 => DynamicImage::ImageRgba16(img.into_rgba16()),
        E::Rgb32F => DynamicImage::ImageRgb32F(img.into_rgb32f()),
        E::Rgba32F => DynamicImage::ImageRgba32F(img.into_rgba32f()),
        _ => return None,
    })
}

/// Encodes `img` into `path`, the format chosen by its extension (as `image`'s `save`). A regular
/// file (or the one a symbolic link names) is overwritten in place; a new name is created. A
/// symbolic link to nothing is an error ([`Error::Os`], not found): the file it names is not created,
/// so a link planted in a shared directory cannot make `save` create a file elsewhere.
///
/// # Errors
/// [`Error::BadFile`] with [`FileProblem::Image`] if it cannot be encoded in that format, with
/// [`FileProblem::NotRegular`] if `path` names something other than a regular file (a FIFO, a
/// device, a directory), which is left as it is, not opened for writing; [`Error::Os`] if it cannot
/// be written.
///
/// # Examples
/// ```
/// let img = mproc::integrations::image::new_image::<image::Luma<u8>>(4, 4)?;
/// let path = std::env::temp_dir().join(format!("mproc-doc-save-{}.png", std::process::id()));
/// mproc::integrations::image::save(&img, &path)?;
/// assert_eq!(image::open(&path).unwrap().width(), 4);
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn save<P>(img: &SharedImage<P>, path: impl AsRef<Path>) -> Result<()>
where
    P: PixelWithColorType,
    P::Subpixel: Pod,
    [P::Subpixel]: image::EncodableLayout,
{
    use std::io::Write;
    let path = path.as_ref();
    let format = image::ImageFormat::from_path(path).map_err(|e| image_error(path, e))?;
    let mut out = std::io::BufWriter::new(create_regular(path)?);
    img.write_to(&mut out, format).map_err(|e| match e {
        ImageError::IoError(e) => Error::os("write image", e),
        other => image_error(path, other),
    })?;
    // Flushed here, not by the drop, which would lose an error (a full disk, say).
    out.flush().map_err(|e| Error::os("write image", e))
}

/// `path` opened for writing and emptied if it names a regular file, else created: never opened for
/// writing if it is anything else (found by review: `File::create` waited for a reader forever on a
/// FIFO, and wrote into a device). The existing file is opened only after `fstat` shows it regular
/// (`open_regular`), and a new one with `O_EXCL`, so a FIFO put in its place meanwhile is not opened
/// either; a name that keeps changing between the two is given up on after a few rounds.
fn create_regular(path: &Path) -> Result<File> {
    let mut tries = 0;
    loop {
        tries += 1;
        match File::options().write(true).create_new(true).open(path) {
            Ok(file) => return Ok(file),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::os("create image", e)),
        }
        // Write only, as `File::create`: a file we may write but not read is still ours to replace.
        match crate::sys::filemap::open_regular_write_only(path) {
            Ok(file) => {
                file.set_len(0)
                    .map_err(|e| Error::os("truncate image", e))?;
                return Ok(file);
            }
            // Removed since the `create_new` (or a link to nothing): create it on the next round.
            Err(Error::Os { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && tries < 3 => {}
            Err(e) => return Err(e),
        }
    }
}

/// The worker side of [`map_bands`]: the task's slices as images, (width, height) its parameters.
struct Bands<P, Q>(std::marker::PhantomData<(P, Q)>);

// SAFETY: `User` is a function-pointer type.
unsafe impl<P, Q> TransformVia<P::Subpixel, Q::Subpixel, (u32, u32)> for Bands<P, Q>
where
    P: Pixel,
    Q: Pixel,
    P::Subpixel: Pod,
    Q::Subpixel: Pod,
{
    type User = fn(ImageView<'_, P>, BandMut<'_, Q>, u32);

    fn call(
        f: Self::User,
        &(w, h): &(u32, u32),
        input: &[P::Subpixel],
        out: &mut [Q::Subpixel],
        start: usize,
    ) {
        // The parameters come from a shared ring: anything that does not fit fails the task (as a
        // panic, reported as `TaskPanicked`), never a view outside the buffers.
        let row = (w as usize)
            .saturating_mul(usize::from(Q::CHANNEL_COUNT))
            .max(1);
        let rows = u32::try_from(out.len() / row).expect("a band's height fits in u32");
        let first = u32::try_from(start / row).expect("a row index fits in u32");
        let input = ImageBuffer::from_raw(w, h, input).expect("the input fits its dimensions");
        let band = ImageBuffer::from_raw(w, rows, out).expect("the band is whole rows");
        f(input, band, first)
    }
}

/// `f` over bands of `band_rows` output rows, on the pool: each task calls
/// `f(input, band, first_row)` with a view of the whole input (a filter may read the rows around
/// its band) and a mutable view of its band of a new image of the same dimensions, both in shared
/// memory in place. Only handles and the dimensions travel. `f` is a function pointer: a `fn` item
/// or a closure that captures nothing (a worker cannot have what a closure captured here).
///
/// # Errors
/// As [`Pool::transform`]; as [`new_image`] for the output; [`Error::Shape`] if a band's size
/// overflows.
///
/// # Panics
/// If `band_rows` is 0.
///
/// # Examples
/// ```
/// use image::Luma;
/// use mproc::integrations::image::{from_image, map_bands, BandMut, ImageView};
///
/// // Each output pixel: the input's, inverted.
/// fn invert(input: ImageView<Luma<u8>>, mut band: BandMut<Luma<u8>>, first_row: u32) {
///     for (x, y, px) in band.enumerate_pixels_mut() {
///         *px = Luma([255 - input.get_pixel(x, first_row + y).0[0]]);
///     }
/// }
///
/// let pool = mproc::Pool::builder().workers(2).build()?;
/// let img = from_image(&image::GrayImage::from_fn(8, 9, |x, y| Luma([(x * y) as u8])))?;
/// let inverted = map_bands(&pool, &img, 4, invert)?; // bands of rows 0..4, 4..8, 8..9
/// assert_eq!(inverted.get_pixel(7, 8), &Luma([255 - 56]));
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// A closure that captures anything is refused at compile time, even a zero-sized capture (a worker
/// would have to make up the captured value, which may prove something only this process knows):
/// ```compile_fail,E0308
/// # use image::Luma;
/// # use mproc::integrations::image::{map_bands, new_image, BandMut, ImageView};
/// #[derive(Clone, Copy)]
/// struct Token; // say, a proof that a global was set up in this process
/// let token = Token;
/// let pool = mproc::Pool::builder().workers(1).build()?;
/// let img = new_image::<Luma<u8>>(2, 2)?;
/// map_bands(&pool, &img, 1, move |_: ImageView<Luma<u8>>, _: BandMut<Luma<u8>>, _: u32| {
///     let _ = token;
/// })?;
/// # Ok::<(), mproc::Error>(())
/// ```
#[track_caller]
pub fn map_bands<P, Q>(
    pool: &Pool,
    input: &SharedImage<P>,
    band_rows: u32,
    f: fn(ImageView<'_, P>, BandMut<'_, Q>, u32),
) -> Result<SharedImage<Q>>
where
    P: Pixel,
    Q: Pixel,
    P::Subpixel: Pod,
    Q::Subpixel: Pod,
{
    assert!(band_rows > 0, "band_rows must be at least 1");
    let task = transform_via_fn::<P::Subpixel, Q::Subpixel, (u32, u32), Bands<P, Q>>(f);
    let (w, h) = input.dimensions();
    let mut out = SharedArray::<Q::Subpixel>::zeroed(subpixels::<Q>(w, h)?)?;
    if !out.is_empty() {
        let chunk = subpixels::<Q>(w, band_rows)?;
        pool.transform_tasks(input.as_raw(), &mut out, chunk, &(w, h), task)?;
    }
    Ok(ImageBuffer::from_raw(w, h, out).expect("sized for these dimensions"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use image::{Luma, Rgb, RgbImage};

    use super::*;

    struct Temp(std::path::PathBuf);

    impl Temp {
        fn new(ext: &str) -> Temp {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            Temp(
                std::env::temp_dir()
                    .join(format!("mproc-image-test-{}-{n}.{ext}", std::process::id())),
            )
        }

        /// A sparse file: `head`, then a hole up to `len` bytes (a few KiB on disk).
        fn sparse(ext: &str, head: &[u8], len: u64) -> Temp {
            let t = Temp::new(ext);
            std::fs::write(&t.0, head).unwrap();
            File::options()
                .write(true)
                .open(&t.0)
                .unwrap()
                .set_len(len)
                .unwrap();
            t
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A FIFO named like an image is refused without being opened: opening it for reading would wait
    /// for a writer forever (until 2026-12-01, `open` hung; found by review).
    #[test]
    fn a_fifo_is_refused_not_waited_on() {
        let fifo = Temp::new("png");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo.0)
            .status()
            .expect("run mkfifo");
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.0.clone();
        std::thread::spawn(move || {
            let _ = tx.send(open::<Rgb<u8>>(&path).map(drop));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("open of a FIFO hangs");
        assert!(
            matches!(
                r,
                Err(Error::BadFile {
                    problem: FileProblem::NotRegular,
                    ..
                })
            ),
            "{r:?}"
        );
    }

    /// Review: `save` opened its path with `File::create`, which waits for a reader forever on a
    /// FIFO and writes into a device (here `/dev/null`, through a link named like an image). Both are
    /// refused without being opened for writing, and left as they were (as `npy::write_npy` does).
    /// Bounded, to prove "no hang" only.
    #[test]
    fn save_refuses_a_fifo_or_a_device_without_waiting() {
        use std::os::unix::fs::FileTypeExt;
        let fifo = Temp::new("png");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo.0)
            .status()
            .expect("run mkfifo");
        assert!(made.success());
        let device = Temp::new("png");
        std::os::unix::fs::symlink("/dev/null", &device.0).unwrap();
        for target in [&fifo.0, &device.0] {
            let (tx, rx) = std::sync::mpsc::channel();
            let path = target.clone();
            std::thread::spawn(move || {
                let img = new_image::<Luma<u8>>(2, 2).unwrap();
                let _ = tx.send(save(&img, &path));
            });
            let r = rx
                .recv_timeout(std::time::Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("save to {} hangs", target.display()));
            assert!(
                matches!(
                    r,
                    Err(Error::BadFile {
                        problem: FileProblem::NotRegular,
                        ..
                    })
                ),
                "{}: {r:?}",
                target.display()
            );
        }
        assert!(std::fs::metadata(&fifo.0).unwrap().file_type().is_fifo());
        assert!(std::fs::symlink_metadata(&device.0)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(std::fs::metadata(&device.0)
            .unwrap()
            .file_type()
            .is_char_device());
    }

    /// `save` creates a new file and replaces the contents of an existing one, through a link too.
    #[test]
    fn save_creates_or_overwrites_a_regular_file() {
        let t = Temp::new("png");
        let link = Temp::new("png");
        std::os::unix::fs::symlink(&t.0, &link.0).unwrap();
        save(&from_image(&card(9, 5)).unwrap(), &t.0).unwrap();
        assert_eq!(image::open(&t.0).unwrap().width(), 9);
        save(&from_image(&card(3, 2)).unwrap(), &link.0).unwrap();
        assert_eq!(image::open(&t.0).unwrap().width(), 3);
        assert!(std::fs::symlink_metadata(&link.0)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    /// Found by review: the `image` crate's JPEG decoder reads the whole file into a `Vec` before it
    /// reads its header, so a JPEG of any length was read into memory whole, past the 512 MiB the
    /// module promises for every buffer (a sparse file of a few GiB, a JPEG signature before a hole,
    /// took that much memory). Such a file is refused for the memory limit before it is read; here a
    /// hole of 600 MiB (4 KiB on disk).
    #[test]
    fn a_jpeg_longer_than_the_memory_limit_is_refused_unread() {
        let t = Temp::sparse("jpg", b"\xff\xd8\xff\xe0", 600 << 20);
        assert_memory_limit(open::<Rgb<u8>>(&t.0).map(|i| i.dimensions()));
    }

    /// Found by review: the palette check walked a PNG's chunks to the end of the file whatever they
    /// were, where the decoder stops at the first chunk it cannot read. A PNG signature followed by
    /// a hole (a sparse file of 1 TiB: 4 KiB on disk) reads as zero-length chunks of type `\0\0\0\0`,
    /// so `open` read a terabyte of zeros, 12 bytes at a time (hours), before the decoder refused
    /// the first one. The walk ends where the decoder's would. Bounded, to prove "no hang" only.
    #[test]
    fn a_png_signature_before_a_hole_is_refused_without_reading_the_hole() {
        let t = Temp::sparse("png", b"\x89PNG\r\n\x1a\n", 1 << 40);
        let (tx, rx) = std::sync::mpsc::channel();
        let path = t.0.clone();
        std::thread::spawn(move || {
            let _ = tx.send(open::<Rgb<u8>>(&path).map(drop));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("open reads the whole hole");
        assert!(matches!(r, Err(Error::BadFile { .. })), "{r:?}");
    }

    /// Found by review: `save` opened an existing file for reading and writing (`open_regular`), so a
    /// file its caller may write but not read (mode `0o222`, a drop box) was refused with `EACCES`,
    /// where `File::create` (write only), which `save` used before, overwrote it. Shown from a thread
    /// whose file-system identity is `nobody` when the test runs as root (`setfsuid` is per thread
    /// and takes the thread's `CAP_DAC_OVERRIDE` with it), so that the mode bits apply.
    #[test]
    fn save_overwrites_a_file_it_may_write_but_not_read() {
        use std::os::unix::fs::PermissionsExt;
        let t = Temp::new("png");
        std::fs::write(&t.0, b"old").unwrap();
        std::fs::set_permissions(&t.0, std::fs::Permissions::from_mode(0o222)).unwrap();
        let path = t.0.clone();
        let saved = std::thread::spawn(move || {
            // SAFETY: `setfsuid` changes only this thread's file-system uid (the thread ends right
            // after); it touches no memory. As a non-root user it fails and changes nothing, and the
            // owner's own `-w-` bits apply.
            unsafe { libc::setfsuid(65534) };
            save(&from_image(&card(4, 3)).unwrap(), &path)
        })
        .join()
        .unwrap();
        assert!(saved.is_ok(), "{saved:?}");
        std::fs::set_permissions(&t.0, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(image::open(&t.0).unwrap().width(), 4);
    }

    fn card(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let on = (x / 5 + y / 7) % 2 == 0;
            Rgb([
                if on { 230 } else { 15 },
                (x * 7 % 256) as u8,
                (y * 3 % 256) as u8,
            ])
        })
    }

    /// Luma, then a 3x3 box blur that reads the rows around its band (clamped at the borders).
    fn gray_blur(input: ImageView<'_, Rgb<u8>>, mut band: BandMut<'_, Luma<u8>>, first: u32) {
        let (w, h) = input.dimensions();
        let luma = |x: u32, y: u32| {
            let [r, g, b] = input.get_pixel(x, y).0.map(u32::from);
            (77 * r + 150 * g + 29 * b) >> 8
        };
        for (x, y, px) in band.enumerate_pixels_mut() {
            let y = first + y;
            let mut sum = 0;
            for dy in [-1i64, 0, 1] {
                for dx in [-1i64, 0, 1] {
                    let xx = (i64::from(x) + dx).clamp(0, i64::from(w) - 1) as u32;
                    let yy = (i64::from(y) + dy).clamp(0, i64::from(h) - 1) as u32;
                    sum += luma(xx, yy);
                }
            }
            *px = Luma([(sum / 9) as u8]);
        }
    }

    #[test]
    fn png_decodes_straight_into_shared_memory() {
        let t = Temp::new("png");
        let c = card(37, 23);
        c.save(&t.0).unwrap();
        let shared = open::<Rgb<u8>>(&t.0).unwrap();
        assert_eq!(shared.dimensions(), (37, 23));
        assert_eq!(shared.as_raw().as_ref(), c.as_raw().as_slice());
        let gray = open::<Luma<u8>>(&t.0).unwrap();
        let want = image::open(&t.0).unwrap().into_luma8();
        assert_eq!(gray.as_raw().as_ref(), want.as_raw().as_slice());
        let wide = open::<image::Rgba<u16>>(&t.0).unwrap();
        assert_eq!(
            wide.as_raw().as_ref(),
            image::open(&t.0).unwrap().into_rgba16().as_raw().as_slice()
        );
    }

    /// decode → process on the pool → encode gives, pixel for pixel, what one process gives.
    #[test]
    fn pool_bands_equal_one_process() {
        let pool = Pool::builder().workers(2).build().unwrap();
        for (w, h, band) in [(64, 48, 16), (37, 23, 5), (1, 1, 1), (13, 29, 64)] {
            let src = Temp::new("png");
            card(w, h).save(&src.0).unwrap();
            let input = open::<Rgb<u8>>(&src.0).unwrap();
            let edges = map_bands(&pool, &input, band, gray_blur).unwrap();
            let out = Temp::new("png");
            save(&edges, &out.0).unwrap();

            let decoded = image::open(&src.0).unwrap().into_rgb8();
            let mut single = image::GrayImage::new(w, h);
            let view: ImageView<'_, Rgb<u8>> =
                ImageBuffer::from_raw(w, h, decoded.as_raw().as_slice()).unwrap();
            let whole: BandMut<'_, Luma<u8>> = ImageBuffer::from_raw(w, h, &mut *single).unwrap();
            gray_blur(view, whole, 0);
            let reread = image::open(&out.0).unwrap().into_luma8();
            assert_eq!(reread, single, "{w}x{h}, bands of {band}");
        }
    }

    /// Signature, IHDR (40000 x 40000, 8-bit RGB), an IDAT of one row's worth of zlib, IEND.
    const HUGE_PNG: &[u8] =
        b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\x9c\x40\0\0\x9c\x40\x08\x02\0\0\0\
        \xde\x6e\x99\x52\0\0\0\x0bIDAT\x78\x9c\x63\x60\x80\x01\0\0\x0a\0\x01\x7f\x80\x74\x5e\
        \0\0\0\0IEND\xae\x42\x60\x82";

    #[test]
    fn jpeg_and_bad_files() {
        let t = Temp::new("jpg");
        card(40, 30).save(&t.0).unwrap();
        let jpeg = open::<Rgb<u8>>(&t.0).unwrap();
        let want = image::open(&t.0).unwrap().into_rgb8();
        assert_eq!(jpeg.as_raw().as_ref(), want.as_raw().as_slice());

        let bad = Temp::new("png");
        std::fs::write(&bad.0, b"\x89PNG\r\n\x1a\n garbage").unwrap();
        assert!(matches!(
            open::<Rgb<u8>>(&bad.0),
            Err(Error::BadFile {
                problem: FileProblem::Image(_),
                ..
            })
        ));
        assert!(matches!(
            open::<Rgb<u8>>("/nonexistent/mproc.png"),
            Err(Error::Os { .. })
        ));
        // A PNG of 69 bytes whose header claims 40000 x 40000 RGB pixels (4.8 GB; found by fuzzing):
        // refused by the `image` crate's memory limit before any buffer is made for it.
        let huge = Temp::new("png");
        std::fs::write(&huge.0, HUGE_PNG).unwrap();
        assert_memory_limit(open::<Rgb<u8>>(&huge.0).map(|i| i.dimensions()));
        let empty = new_image::<Luma<u8>>(0, 5).unwrap();
        let pool = Pool::builder().workers(1).build().unwrap();
        fn copy(_: ImageView<'_, Luma<u8>>, _: BandMut<'_, Luma<u8>>, _: u32) {}
        assert_eq!(
            map_bands(&pool, &empty, 4, copy).unwrap().dimensions(),
            (0, 5)
        );
    }

    /// `r` is the `image` crate's refusal for want of memory (its default limits).
    fn assert_memory_limit(r: Result<(u32, u32)>) {
        let limit = ImageError::Limits(image::error::LimitError::from_kind(
            image::error::LimitErrorKind::InsufficientMemory,
        ));
        match r {
            Err(Error::BadFile {
                problem: FileProblem::Image(why),
                ..
            }) => assert_eq!(why, limit.to_string()),
            other => panic!("expected the memory limit, got {other:?}"),
        }
    }

    /// A PNG file of these chunks (each with its CRC), after the signature.
    fn png_of(chunks: &[(&[u8; 4], &[u8])]) -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut c = !0u32;
            for &b in bytes {
                c ^= u32::from(b);
                for _ in 0..8 {
                    c = if c & 1 != 0 {
                        0xedb8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                }
            }
            !c
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in chunks {
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let start = png.len();
            png.extend_from_slice(&kind[..]);
            png.extend_from_slice(data);
            let crc = crc32(&png[start..]);
            png.extend_from_slice(&crc.to_be_bytes());
        }
        png
    }

    fn ihdr(w: u32, h: u32, depth: u8, color: u8) -> Vec<u8> {
        let mut v = w.to_be_bytes().to_vec();
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&[depth, color, 0, 0, 0]);
        v
    }

    /// Two files the fuzz targets found (`fuzz/README.md`, I2 and I3): typed errors, and no buffer
    /// beyond the `image` crate's limit.
    #[test]
    fn hostile_pngs_found_by_fuzzing() {
        // I3: a 1 x 1 indexed PNG whose PLTE is 4 bytes long made `png` 0.18.1 panic, on both paths.
        let idat: &[u8] = &[0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01];
        let short_palette = Temp::new("png");
        let header = ihdr(1, 1, 8, 3);
        std::fs::write(
            &short_palette.0,
            png_of(&[
                (b"IHDR", &header),
                (b"PLTE", &[10, 20, 30, 40]),
                (b"IDAT", idat),
                (b"IEND", &[]),
            ]),
        )
        .unwrap();
        for r in [
            open::<Rgb<u8>>(&short_palette.0).map(|i| i.dimensions()),
            open::<Luma<u8>>(&short_palette.0).map(|i| i.dimensions()),
        ] {
            match r {
                Err(Error::BadFile {
                    problem: FileProblem::Image(why),
                    ..
                }) => assert!(why.contains("PLTE chunk of 4 bytes"), "{why}"),
                other => panic!("expected BadFile for the short palette, got {other:?}"),
            }
        }
        // I2: 16384 x 16384 RGBA of 16 bits asked for as `Luma<u8>`: the shared buffer (256 MiB) is
        // within the limit, but the decoder's output that the conversion starts from (2 GiB) is not.
        let deep = Temp::new("png");
        let header = ihdr(16384, 16384, 16, 6);
        std::fs::write(
            &deep.0,
            png_of(&[(b"IHDR", &header), (b"IDAT", idat), (b"IEND", &[])]),
        )
        .unwrap();
        assert_memory_limit(open::<Luma<u8>>(&deep.0).map(|i| i.dimensions()));
        // A panic in a decoder is a typed error, when it can be caught.
        match guarded(&deep.0, || -> Result<()> { panic!("a decoder bug") }) {
            Err(Error::BadFile { .. }) => {}
            other => panic!("expected BadFile, got {other:?}"),
        }
    }
}
