using MathNet.Numerics;

namespace MriSeg.Privacy.Numerics;

/// <summary>Log-space helpers and the few special functions the accountants need.</summary>
internal static class LogMath
{
    private static readonly double HalfLogPi = 0.5 * Math.Log(Math.PI);

    /// <summary>log(exp(a) + exp(b)) without overflow; -inf is the neutral element.</summary>
    public static double LogAddExp(double a, double b)
    {
        if (double.IsNegativeInfinity(a))
        {
            return b;
        }

        if (double.IsNegativeInfinity(b))
        {
            return a;
        }

        return a >= b ? a + Log1P(Math.Exp(b - a)) : b + Log1P(Math.Exp(a - b));
    }

    /// <summary>log(1 + x), accurate for small |x| (Kahan's trick).</summary>
    public static double Log1P(double x)
    {
        double y = 1.0 + x;
        if (y == 1.0)
        {
            return x;
        }

        return Math.Log(y) * (x / (y - 1.0));
    }

    /// <summary>exp(x) - 1, accurate for small |x| (Kahan's trick).</summary>
    public static double ExpM1(double x)
    {
        if (Math.Abs(x) < 1e-5)
        {
            return x + (0.5 * x * x) + (x * x * x / 6.0);
        }

        double y = Math.Exp(x);
        if (double.IsPositiveInfinity(y))
        {
            return y;
        }

        return x > 0.7 || x < -0.7 ? y - 1.0 : (y - 1.0) * x / Math.Log(y);
    }

    /// <summary>log(exp(x) - 1) for x &gt; 0, stable for both tiny and huge x.</summary>
    public static double LogExpM1(double x)
    {
        if (x > 30)
        {
            return x + Log1P(-Math.Exp(-x));
        }

        return Math.Log(ExpM1(x));
    }

    /// <summary>log(erfc(x)) for every real x, including arguments where erfc underflows.</summary>
    public static double LogErfc(double x)
    {
        if (x < 20.0)
        {
            return Math.Log(SpecialFunctions.Erfc(x));
        }

        // erfc(x) = exp(-x^2) / (x sqrt(pi)) * sum_k (-1)^k (2k-1)!! / (2x^2)^k; at x >= 20 eight terms
        // leave an error below 1e-17 relative.
        double x2 = x * x;
        double inv = 1.0 / (2.0 * x2);
        double term = 1.0;
        double sum = 1.0;
        for (int k = 1; k <= 8; k++)
        {
            term *= -(2 * k - 1) * inv;
            sum += term;
        }

        return -x2 - Math.Log(x) - HalfLogPi + Math.Log(sum);
    }

    /// <summary>log(erfcx(x)) = log(exp(x²)·erfc(x)) for every real x.</summary>
    public static double LogErfcx(double x)
    {
        if (x < 20.0)
        {
            return (x * x) + Math.Log(SpecialFunctions.Erfc(x));
        }

        double inv = 1.0 / (2.0 * x * x);
        double term = 1.0;
        double sum = 1.0;
        for (int k = 1; k <= 8; k++)
        {
            term *= -(2 * k - 1) * inv;
            sum += term;
        }

        return -Math.Log(x) - HalfLogPi + Math.Log(sum);
    }

    /// <summary>
    /// Σ_{k≥0} (-1)^k a_k for a completely monotone (moment) sequence a_k, by the acceleration of Cohen,
    /// Rodriguez Villegas and Zagier (2000, algorithm 1): relative error below 2·(3+√8)^(-n).
    /// </summary>
    public static double AlternatingSum(Func<int, double> a, int n)
    {
        double d = Math.Pow(3.0 + Math.Sqrt(8.0), n);
        d = (d + (1.0 / d)) / 2.0;
        double b = -1.0;
        double c = -d;
        double s = 0.0;
        for (int k = 0; k < n; k++)
        {
            c = b - c;
            s += c * a(k);
            b = (k + n) * (k - n) * b / ((k + 0.5) * (k + 1));
        }

        return s / d;
    }

    /// <summary>erfc(x); 0 where it underflows.</summary>
    public static double Erfc(double x) => SpecialFunctions.Erfc(x);
}

/// <summary>Neumaier (improved Kahan) summation.</summary>
internal struct CompensatedSum
{
    private double _sum;
    private double _compensation;

    public void Add(double value)
    {
        double t = _sum + value;
        if (Math.Abs(_sum) >= Math.Abs(value))
        {
            _compensation += (_sum - t) + value;
        }
        else
        {
            _compensation += (value - t) + _sum;
        }

        _sum = t;
    }

    public readonly double Value => _sum + _compensation;
}

/// <summary>Composite Gauss-Legendre quadrature with nodes computed once by Newton's method.</summary>
internal static class GaussLegendre
{
    private const int Order = 10;
    private static readonly (double[] Nodes, double[] Weights) Rule = Build(Order);

    /// <summary>Integrates f over [a, b] split into <paramref name="panels"/> equal panels.</summary>
    public static double Integrate(Func<double, double> f, double a, double b, int panels)
    {
        if (!(b > a))
        {
            return 0.0;
        }

        var (nodes, weights) = Rule;
        double h = (b - a) / panels;
        var total = new CompensatedSum();
        for (int p = 0; p < panels; p++)
        {
            double mid = a + ((p + 0.5) * h);
            double half = 0.5 * h;
            double s = 0.0;
            for (int i = 0; i < nodes.Length; i++)
            {
                s += weights[i] * f(mid + (half * nodes[i]));
            }

            total.Add(s * half);
        }

        return total.Value;
    }

    private static (double[] Nodes, double[] Weights) Build(int n)
    {
        var nodes = new double[n];
        var weights = new double[n];
        for (int i = 0; i < n; i++)
        {
            double x = Math.Cos(Math.PI * (i + 0.75) / (n + 0.5));
            double dp = 0.0;
            for (int iter = 0; iter < 100; iter++)
            {
                // Legendre recurrence for P_n(x) and its derivative.
                double p0 = 1.0;
                double p1 = x;
                for (int k = 2; k <= n; k++)
                {
                    double pk = (((2 * k) - 1) * x * p1 - ((k - 1) * p0)) / k;
                    p0 = p1;
                    p1 = pk;
                }

                dp = n * ((x * p1) - p0) / ((x * x) - 1.0);
                double dx = p1 / dp;
                x -= dx;
                if (Math.Abs(dx) < 1e-16)
                {
                    break;
                }
            }

            nodes[i] = x;
            weights[i] = 2.0 / ((1.0 - (x * x)) * dp * dp);
        }

        return (nodes, weights);
    }
}
