namespace MriSeg.KeyRelease.Tests;
