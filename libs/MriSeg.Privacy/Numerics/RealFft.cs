using System.Numerics;

namespace MriSeg.Privacy.Numerics;

/// <summary>
/// Real-input FFT of a power-of-two length m, computed as a complex FFT of length n = m/2 on split
/// re/im arrays (even samples in re, odd samples in im) and the usual split step.
/// </summary>
/// <remarks>
/// <para>No bit-reversal permutation is ever done (on large arrays it costs more than the butterflies):
/// the forward transform is a radix-2 decimation in frequency (natural order in, bit-reversed order
/// out) and the inverse a decimation in time (bit-reversed in, natural out). The spectrum is therefore
/// held in bit-reversed layout (see <see cref="SpectrumIndex"/>), which is all pointwise products and
/// powers need. The split step pairs X[k] with X[n-k]; in bit-reversed layout the partner of position
/// 2^s + x is 2^(s+1) - 1 - x, so that step is two sequential sweeps too.</para>
/// <para>Stages whose span fits a cache block run block by block; larger spans are full passes whose
/// twiddles are built per tile from two small tables (exp(-2πik/m) = hi(k_hi)·lo(k_lo)), so no table of
/// size m is held.</para>
/// </remarks>
internal sealed unsafe class RealFft
{
    private const int BlockLog = 12;
    private const int Tile = 1024;

    private readonly int _m;
    private readonly int _n;
    private readonly int _logN;
    private readonly int _block;
    private readonly int _lowBits;
    private readonly double[] _hiC;
    private readonly double[] _hiS;
    private readonly double[] _loC;
    private readonly double[] _loS;
    private readonly double[] _stageC; // stage s (span m = 2^s) twiddles at [m/2, m)
    private readonly double[] _stageS;

    public RealFft(int m)
    {
        if (m < 4 || (m & (m - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(m), m, "Length must be a power of two >= 4.");
        }

        _m = m;
        _n = m / 2;
        _logN = BitOperations.Log2((uint)_n);
        _block = Math.Min(_n, 1 << BlockLog);
        int logM = _logN + 1;
        _lowBits = (logM + 1) / 2;
        int lowSize = 1 << _lowBits;
        int hiSize = m >> _lowBits;
        _loC = new double[lowSize];
        _loS = new double[lowSize];
        _hiC = new double[hiSize];
        _hiS = new double[hiSize];
        for (int k = 0; k < lowSize; k++)
        {
            (_loS[k], _loC[k]) = Math.SinCos(-2.0 * Math.PI * k / m);
        }

        for (int k = 0; k < hiSize; k++)
        {
            (_hiS[k], _hiC[k]) = Math.SinCos(-2.0 * Math.PI * ((double)k * lowSize) / m);
        }

        _stageC = new double[_block];
        _stageS = new double[_block];
        for (int span = 2; span <= _block; span <<= 1)
        {
            int half = span / 2;
            for (int k = 0; k < half; k++)
            {
                (_stageS[half + k], _stageC[half + k]) = Math.SinCos(-2.0 * Math.PI * k / span);
            }
        }
    }

    /// <summary>The real length m.</summary>
    public int Length => _m;

    /// <summary>
    /// Forward transform in place. In: re[j] = x[2j], im[j] = x[2j+1] for j &lt; n (arrays of length n+1).
    /// Out: X[k] = Σ x[t] exp(-2πikt/m) for k = 0..n at position <see cref="SpectrumIndex"/>(k).
    /// </summary>
    public void Forward(double[] re, double[] im)
    {
        CheckArrays(re, im);
        fixed (double* pr = re, pi = im)
        {
            ForwardComplex(pr, pi);
            int n = _n;
            double z0r = pr[0];
            double z0i = pi[0];
            pr[0] = z0r + z0i;
            pi[0] = 0.0;
            pr[n] = z0r - z0i;
            pi[n] = 0.0;
            if (n >= 2)
            {
                pi[1] = -pi[1]; // X[n/2] = conj(Z[n/2]), held at position 1
            }

            for (int s = 1; s < _logN; s++)
            {
                int start = 1 << s;
                int last = (2 << s) - 1;
                for (int x = 0; x < start / 2; x++)
                {
                    int p = start + x;
                    int p2 = last - x;
                    int k = (int)(ReverseBits((uint)p) >> (32 - _logN));
                    double ar = pr[p], ai = pi[p], br = pr[p2], bi = pi[p2];
                    Twiddle(k, out double wr, out double wi);

                    // E = (Z[k] + conj Z[l])/2, O = (Z[k] - conj Z[l])/(2i); X[k] = E + w^k O and
                    // X[l] = conj(E) + w^l conj(O) with l = n - k and w^l = -conj(w^k).
                    double er = 0.5 * (ar + br), ei = 0.5 * (ai - bi);
                    double or = 0.5 * (ai + bi), oi = -0.5 * (ar - br);
                    pr[p] = er + ((wr * or) - (wi * oi));
                    pi[p] = ei + ((wr * oi) + (wi * or));
                    pr[p2] = er + ((wi * oi) - (wr * or));
                    pi[p2] = -ei + ((wr * oi) + (wi * or));
                }
            }
        }
    }

    /// <summary>
    /// Inverse of <see cref="Forward"/> including the 1/m scaling: in X[0..n] in bit-reversed layout, out
    /// the packed real samples in natural order.
    /// </summary>
    public void Inverse(double[] re, double[] im)
    {
        CheckArrays(re, im);
        fixed (double* pr = re, pi = im)
        {
            int n = _n;
            double x0 = pr[0];
            double xn = pr[n];
            pr[0] = 0.5 * (x0 + xn);
            pi[0] = 0.5 * (x0 - xn);
            if (n >= 2)
            {
                pi[1] = -pi[1]; // Z[n/2] = conj(X[n/2])
            }

            for (int s = 1; s < _logN; s++)
            {
                int start = 1 << s;
                int last = (2 << s) - 1;
                for (int x = 0; x < start / 2; x++)
                {
                    int p = start + x;
                    int p2 = last - x;
                    int k = (int)(ReverseBits((uint)p) >> (32 - _logN));
                    double ar = pr[p], ai = pi[p], br = pr[p2], bi = pi[p2];
                    Twiddle(k, out double wr, out double wi);

                    // E = (X[k] + conj X[l])/2, O = (X[k] - conj X[l])·conj(w^k)/2, Z[k] = E + iO;
                    // Z[l] = conj(E) + i·O[l] with O[l] = -conj(d)·conj(w^l), w^l = -conj(w^k).
                    double er = 0.5 * (ar + br), ei = 0.5 * (ai - bi);
                    double dr = 0.5 * (ar - br), di = 0.5 * (ai + bi);
                    double or = (dr * wr) + (di * wi), oi = (di * wr) - (dr * wi);
                    pr[p] = er - oi;
                    pi[p] = ei + or;
                    double o2r = (dr * wr) + (di * wi), o2i = (dr * wi) - (di * wr);
                    pr[p2] = er - o2i;
                    pi[p2] = -ei + o2r;
                }
            }

            InverseComplex(pr, pi);
        }

        double scale = 1.0 / _n;
        for (int j = 0; j < _n; j++)
        {
            re[j] *= scale;
            im[j] *= scale;
        }

        re[_n] = 0.0;
        im[_n] = 0.0;
    }

    /// <summary>Where <see cref="Forward"/> leaves X[k] (0 ≤ k ≤ n).</summary>
    public int SpectrumIndex(int k)
    {
        if (k < 0 || k > _n)
        {
            throw new ArgumentOutOfRangeException(nameof(k));
        }

        return k == 0 || k == _n ? k : (int)(ReverseBits((uint)k) >> (32 - _logN));
    }

    private void CheckArrays(double[] re, double[] im)
    {
        if (re.Length < _n + 1 || im.Length < _n + 1)
        {
            throw new ArgumentException($"Arrays must hold at least {_n + 1} values.");
        }
    }

    /// <summary>exp(-2πik/m) from the two small tables.</summary>
    private void Twiddle(long k, out double c, out double s)
    {
        int hi = (int)(k >> _lowBits);
        int lo = (int)(k & ((1 << _lowBits) - 1));
        double hc = _hiC[hi], hs = _hiS[hi], lc = _loC[lo], ls = _loS[lo];
        c = (hc * lc) - (hs * ls);
        s = (hc * ls) + (hs * lc);
    }

    /// <summary>Decimation in frequency: natural order in, bit-reversed order out (sign -1).</summary>
    private void ForwardComplex(double* pr, double* pi)
    {
        int n = _n;
        if (_block < n)
        {
            double* tc = stackalloc double[Tile];
            double* ts = stackalloc double[Tile];
            for (int span = n; span > _block; span >>= 1)
            {
                int half = span >> 1;
                long stride = _m / span; // exp(-2πik/span) = exp(-2πi(k·stride)/m)
                for (int k0 = 0; k0 < half; k0 += Tile)
                {
                    int len = Math.Min(Tile, half - k0);
                    for (int k = 0; k < len; k++)
                    {
                        Twiddle((k0 + k) * stride, out tc[k], out ts[k]);
                    }

                    for (int g = 0; g < n; g += span)
                    {
                        DifButterflies(pr + g + k0, pi + g + k0, tc, ts, len, half);
                    }
                }
            }
        }

        fixed (double* sc = _stageC, ss = _stageS)
        {
            for (int start = 0; start < n; start += _block)
            {
                double* br = pr + start;
                double* bi = pi + start;
                for (int span = _block; span >= 2; span >>= 1)
                {
                    int half = span >> 1;
                    for (int g = 0; g < _block; g += span)
                    {
                        DifButterflies(br + g, bi + g, sc + half, ss + half, half, half);
                    }
                }
            }
        }
    }

    /// <summary>Decimation in time with conjugate twiddles: bit-reversed in, natural order out, unscaled.</summary>
    private void InverseComplex(double* pr, double* pi)
    {
        int n = _n;
        fixed (double* sc = _stageC, ss = _stageS)
        {
            for (int start = 0; start < n; start += _block)
            {
                double* br = pr + start;
                double* bi = pi + start;
                for (int span = 2; span <= _block; span <<= 1)
                {
                    int half = span >> 1;
                    for (int g = 0; g < _block; g += span)
                    {
                        DitButterflies(br + g, bi + g, sc + half, ss + half, half, half);
                    }
                }
            }
        }

        if (_block < n)
        {
            double* tc = stackalloc double[Tile];
            double* ts = stackalloc double[Tile];
            for (int span = _block << 1; span <= n; span <<= 1)
            {
                int half = span >> 1;
                long stride = _m / span;
                for (int k0 = 0; k0 < half; k0 += Tile)
                {
                    int len = Math.Min(Tile, half - k0);
                    for (int k = 0; k < len; k++)
                    {
                        Twiddle((k0 + k) * stride, out tc[k], out ts[k]);
                    }

                    for (int g = 0; g < n; g += span)
                    {
                        DitButterflies(pr + g + k0, pi + g + k0, tc, ts, len, half);
                    }
                }
            }
        }
    }

    /// <summary>
    /// Gentleman-Sande butterflies: (a, b) → (a + b, (a - b)·w) with w = (wc[k], ws[k]).
    /// </summary>
    private static void DifButterflies(double* re, double* im, double* wc, double* ws, int count, int offset)
    {
        double* re2 = re + offset;
        double* im2 = im + offset;
        int k = 0;
        if (Vector.IsHardwareAccelerated && count >= Vector<double>.Count)
        {
            int vl = Vector<double>.Count;
            for (; k <= count - vl; k += vl)
            {
                var ar = Vector.Load(re + k);
                var ai = Vector.Load(im + k);
                var br = Vector.Load(re2 + k);
                var bi = Vector.Load(im2 + k);
                var c = Vector.Load(wc + k);
                var s = Vector.Load(ws + k);
                Vector.Store(ar + br, re + k);
                Vector.Store(ai + bi, im + k);
                var dr = ar - br;
                var di = ai - bi;
                Vector.Store((c * dr) - (s * di), re2 + k);
                Vector.Store((c * di) + (s * dr), im2 + k);
            }
        }

        for (; k < count; k++)
        {
            double ar = re[k], ai = im[k], br = re2[k], bi = im2[k];
            double c = wc[k], s = ws[k];
            re[k] = ar + br;
            im[k] = ai + bi;
            double dr = ar - br, di = ai - bi;
            re2[k] = (c * dr) - (s * di);
            im2[k] = (c * di) + (s * dr);
        }
    }

    /// <summary>
    /// Cooley-Tukey butterflies with conjugate twiddles: (a, b) → (a + b·conj(w), a - b·conj(w)).
    /// </summary>
    private static void DitButterflies(double* re, double* im, double* wc, double* ws, int count, int offset)
    {
        double* re2 = re + offset;
        double* im2 = im + offset;
        int k = 0;
        if (Vector.IsHardwareAccelerated && count >= Vector<double>.Count)
        {
            int vl = Vector<double>.Count;
            for (; k <= count - vl; k += vl)
            {
                var c = Vector.Load(wc + k);
                var s = Vector.Load(ws + k);
                var xr = Vector.Load(re2 + k);
                var xi = Vector.Load(im2 + k);
                var tr = (c * xr) + (s * xi);
                var ti = (c * xi) - (s * xr);
                var ar = Vector.Load(re + k);
                var ai = Vector.Load(im + k);
                Vector.Store(ar + tr, re + k);
                Vector.Store(ai + ti, im + k);
                Vector.Store(ar - tr, re2 + k);
                Vector.Store(ai - ti, im2 + k);
            }
        }

        for (; k < count; k++)
        {
            double c = wc[k], s = ws[k];
            double xr = re2[k], xi = im2[k];
            double tr = (c * xr) + (s * xi);
            double ti = (c * xi) - (s * xr);
            double ar = re[k], ai = im[k];
            re[k] = ar + tr;
            im[k] = ai + ti;
            re2[k] = ar - tr;
            im2[k] = ai - ti;
        }
    }

    private static uint ReverseBits(uint v)
    {
        v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
        v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
        v = ((v >> 4) & 0x0F0F0F0Fu) | ((v & 0x0F0F0F0Fu) << 4);
        v = ((v >> 8) & 0x00FF00FFu) | ((v & 0x00FF00FFu) << 8);
        return (v >> 16) | (v << 16);
    }
}
