using Xunit;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Services.Tests;

public sealed class RunProgressTextTests
{
    [Fact]
    public void A_step_line_shows_the_validation_dice_only_when_the_run_validated_and_other_messages_show_their_text()
    {
        var step = new V1.RunProgress
        {
            Phase = V1.RunPhase.Training, Epoch = 3, Epochs = 50, Step = 3, Steps = 50, Loss = 0.3641, EpsilonSpent = 1.5, EpsilonTarget = 8,
            SamplesPerSecond = 35.2, Message = "step 3",
        };
        Assert.Equal("epoch 3/50, step 3/50, loss 0.364, ε 1.50/8.00, 35 slices/s", step.Describe());
        Assert.False(step.HasValidationDice); // not validated: absent, not 0

        step.ValidationDice = 0;
        Assert.Equal("epoch 3/50, step 3/50, loss 0.364, validation Dice 0.000, ε 1.50/8.00, 35 slices/s", step.Describe());

        var checkpoint = new V1.RunProgress { Phase = V1.RunPhase.Training, Epoch = 3, Message = "checkpoint of epoch 3 sealed and stored (3 steps)" };
        Assert.Equal("training: checkpoint of epoch 3 sealed and stored (3 steps)", checkpoint.Describe());
    }
}
