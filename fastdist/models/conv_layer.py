"""One conv layer's geometry: sizes, kernel, stride, padding and max-pool window, and the
sizes they give (output, pooled output, im2col row). 1-D layers are 2-D ones of height
1 (``kh = sh = qh = 1, ph = 0``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConvLayer"]


@dataclass(frozen=True)
class ConvLayer:
    """One conv layer's geometry (2-D; ``kh = sh = qh = 1, ph = 0`` for 1-D)."""

    cin: int
    h: int
    w: int
    cout: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    qh: int  # max-pool window = stride; 1 = no pooling
    qw: int

    @property
    def ho(self) -> int:
        return (self.h + 2 * self.ph - self.kh) // self.sh + 1

    @property
    def wo(self) -> int:
        return (self.w + 2 * self.pw - self.kw) // self.sw + 1

    @property
    def hp(self) -> int:
        return self.ho // self.qh

    @property
    def wp(self) -> int:
        return self.wo // self.qw

    @property
    def patch(self) -> int:
        """im2col row length: kh * kw * cin."""
        return self.kh * self.kw * self.cin

    def row(self) -> tuple[int, ...]:
        """The integer geometry row the Numba kernel reads (columns: kernels.numba_im2col.GEOM)."""
        return (
            *(self.cin, self.h, self.w, self.cout, self.kh, self.kw, self.sh, self.sw),
            *(self.ph, self.pw, self.ho, self.wo, self.qh, self.qw, self.hp, self.wp),
        )
